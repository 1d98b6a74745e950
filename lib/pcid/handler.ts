/** pcid's commands, and the handler that answers one request against a PciSysfs. */
import { debuglog } from 'node:util';

import { MAX_DOMID } from '../constants';
import { CommandError, parseBool, parseSbdf, type PciSysfs } from './sysfs';

const debug = debuglog('xen-vchan');

/** The commands of pcid v4. */
export const PCID_COMMANDS = [
  'list_assignable',
  'make_assignable',
  'revert_assignable',
  'is_device_assigned',
  'resource_list',
  'reset_device',
  'write_bdf',
] as const;
/** A command pcid v4 defines: one of {@link PCID_COMMANDS}. */
export type PcidCommand = (typeof PCID_COMMANDS)[number];

/** The pciback files write_bdf may write (what libxl writes a BDF to). */
export const PCIBACK_FILES = ['permissive', 'new_slot', 'remove_slot', 'bind', 'unbind', 'do_flr'] as const;

/** What a pcid reply looks like. */
export interface PcidReply {
  /** The request's cmd, echoed ('NA' when it had none). */
  resp: string;
  /** 'okay', or 'failed' with error_desc saying why. */
  error: 'okay' | 'failed';
  /** Why a request failed (v4's words: an errno's text, or what was wrong with the request). */
  error_desc?: string;
  /** The request's id, echoed byte for byte where it had one. */
  id?: unknown;
  [k: string]: unknown;
}

/**
 * Answers one pcid request against SYSFS: the v4 reply shapes. DRIVERS remembers the driver a
 * device was taken from (make_assignable with rebind) for revert_assignable.
 */
export function handlePcidRequest(
  sysfs: PciSysfs,
  drivers: Map<string, string>,
  req: Record<string, unknown>,
): PcidReply {
  const cmd = req.cmd;
  if (typeof cmd !== 'string') return { resp: 'NA', error: 'failed', error_desc: 'Unsupported request or bad packet' };
  const ok = (payload: Record<string, unknown> = {}): PcidReply => ({ ...payload, resp: cmd, error: 'okay' });
  try {
    switch (cmd as PcidCommand) {
      case 'list_assignable':
        return ok({ devices: sysfs.listAssignable() });
      case 'is_device_assigned':
        return ok({ result: sysfs.isAssigned(parseSbdf(req.sbdf)) });
      case 'make_assignable': {
        const sbdf = parseSbdf(req.sbdf);
        const rebind = parseBool(req.rebind, 'rebind');
        const was = sysfs.makeAssignable(sbdf);
        if (rebind && was !== undefined) drivers.set(sbdf, was);
        else if (!rebind) drivers.delete(sbdf);
        return ok();
      }
      case 'revert_assignable': {
        const sbdf = parseSbdf(req.sbdf);
        const rebind = parseBool(req.rebind, 'rebind');
        sysfs.revertAssignable(sbdf, rebind ? drivers.get(sbdf) : undefined);
        if (rebind) drivers.delete(sbdf);
        return ok();
      }
      case 'resource_list': {
        const sbdf = parseSbdf(req.sbdf);
        if (req.domid === undefined) throw new CommandError("No mandatory parameter 'domid'");
        if (typeof req.domid !== 'number' || !Number.isInteger(req.domid) || req.domid < 0 || req.domid > MAX_DOMID)
          throw new CommandError("Parameter 'domid' must be a domain id");
        return ok({ resources: sysfs.resources(sbdf) });
      }
      case 'reset_device':
        sysfs.reset(parseSbdf(req.sbdf));
        return ok();
      case 'write_bdf': {
        const sbdf = parseSbdf(req.sbdf);
        if (req.name === undefined) throw new CommandError("No mandatory parameter 'name'");
        if (typeof req.name !== 'string' || !(PCIBACK_FILES as readonly string[]).includes(req.name))
          throw new CommandError(`Parameter 'name' must be one of ${PCIBACK_FILES.join(', ')}`);
        sysfs.writeBdf(sbdf, req.name);
        return ok();
      }
      default:
        return { resp: cmd, error: 'failed', error_desc: 'Unsupported command' };
    }
  } catch (e) {
    if (e instanceof CommandError) return { resp: cmd, error: 'failed', error_desc: e.message };
    debug('pcid: %s failed: %s', cmd, (e as Error).message);
    return { resp: cmd, error: 'failed', error_desc: (e as Error).message };
  }
}
