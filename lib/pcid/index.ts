/**
 * The PCI daemon ("pcid"): the JSON protocol of Xen's xl pcid series (v4, 2023; never merged),
 * over vchan, with its concurrency hole closed.
 *
 * libxl in dom0 asks the domain that owns the PCI devices (dom0 itself, or a hardware domain) about
 * them instead of reading sysfs itself. Wire format, as v4: a request `{"cmd":"<name>", ...args}`
 * and a reply `{...payload, "resp":"<name>", "error":"okay"}` or `{"resp":"<name>",
 * "error":"failed", "error_desc":"..."}`, each one JSON object followed by `\r\n`; a message that does
 * not parse (bytes that are not UTF-8 included), or has no `cmd`, gets `"resp":"NA"`. On top of v4: a
 * client-chosen `id` is echoed unchanged (as QMP does: its JSON text as the client wrote it, so even
 * integers beyond 2^53 come back byte for byte), so one channel carries many requests at once,
 * answered in any order.
 *
 * Layout, as v4: the server recreates `/local/domain/<server>/data/pcid` and watches it; each client
 * makes `.../data/pcid/<uuid>` and the server offers that client a channel of its own there. The
 * client's domain is the node's owner (a node a privileged domain makes inherits the server's
 * ownership, and is taken as dom0's, as v4 serves dom0 only); domains the server was not told to
 * serve get nothing. The node goes when the client leaves; a client may make a node of the same
 * name again once it is gone (before, the new node would go with the old).
 *
 * Commands (v4's): list_assignable, make_assignable {sbdf, rebind}, revert_assignable {sbdf, rebind},
 * is_device_assigned {sbdf}, resource_list {sbdf, domid}, reset_device {sbdf}, write_bdf {sbdf,
 * name}. They act on Linux's sysfs under a configurable root (default `/sys`), and never on anything
 * outside it: sbdfs and names are checked against strict patterns, and every path is resolved and
 * must stay inside the root (symlinks included).
 *
 * The files: sysfs.ts (PciSysfs), handler.ts (the commands), server.ts (PcidServer), client.ts
 * (PcidClient, connectPcid).
 */
export { PciSysfs, type PciResources } from './sysfs';
export { handlePcidRequest, PCIBACK_FILES, PCID_COMMANDS, type PcidCommand, type PcidReply } from './handler';
export {
  createPcidServer,
  PcidServer,
  type PcidConnection,
  type PcidServerEvents,
  type PcidServerOptions,
} from './server';
export { connectPcid, PcidClient, PcidError, type PcidClientEvents, type PcidConnectOptions } from './client';
