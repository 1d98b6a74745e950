/** The CLI's usage text: all of it, or one command's lines (`xen-vchan <command> --help`). */

export const USAGE = `usage: xen-vchan <command> [options]      (xen-vchan --version; xen-vchan <command> --help)

  demo [--bytes N] [--ring N]        a dom0 server and a domU client (two processes) on the mock, streaming
                                     data both ways and printing throughput
  listen --domid D --path P          serve one vchan client of domain D on stdin/stdout
         [--read-min N] [--write-min N] [--keep] [--raw] [--send-only | --recv-only]
                                     (--keep: serve the next client after one leaves; with --recv-only)
  connect --domid D --path P         connect to the vchan server of domain D at the full xenstore path P,
         [--timeout MS] [--raw] [--send-only | --recv-only]      stdin/stdout
                                     listen and connect end when all is delivered both ways, and exit 1
                                     if any byte of stdin or of the peer's was lost. Both ends xen-vchan
                                     (the default): stdin's end travels as an end-of-data frame of ours
                                     (the proxy's framing), each direction ends on its own, and the
                                     channel closes once both have. --raw, for a plain libxenvchan peer
                                     (no half-close in vchan): bytes as they are; stdin's end does not
                                     close the channel (what the peer sends still comes) until the peer
                                     closes it, as nc does; --send-only closes it at stdin's end (nc -N)
                                     and --recv-only never reads stdin
  proxy --domid D --path P --listen unix:/sock|tcp:HOST:PORT [--raw] [--connect-timeout MS]
                                     accept socket connections, any number at once, each carried over a
                                     vchan of its own to the proxy --serve of domain D at the full path P;
                                     one that gets no channel in MS (default 120000; 0: no limit) is
                                     refused, and a wait of over a second is logged
  proxy --serve --domid D --path P --connect unix:/sock|tcp:HOST:PORT [--max N] [--raw]
                                     serve domain D's proxy at P: each of its connections becomes a
                                     socket connection (--max: at most N at once, the others wait;
                                     default 256). Half-close travels end to end; --raw passes bytes
                                     unframed, for a plain libxenvchan peer (no half-close)
  pcid serve [--sysfs DIR] [--client D]... [--path P]
                                     the PCI daemon (pcid v4's JSON protocol, with ids): serve the listed
                                     domains (default 0) at /local/domain/<self>/P (default data/pcid),
                                     acting on the PCI sysfs under DIR (default /sys)
  pcid call CMD [NAME=VALUE]... [--domid D] [--path P] [--timeout MS]
                                     one request to the pcid of domain D (default 0); prints the reply
                                     (JSON), exit 1 if it failed. VALUE is JSON where it parses
                                     (true, 3), else a string: pcid call is_device_assigned sbdf=0000:00:01.0
  pvcalls serve [--domid D]... [--max-sockets N] [--max-pending-accepts N] [--max-ring-order N]
                                     the PVCalls backend (dom0): serve the socket calls of the frontends
                                     of domains D (default: every PVCalls device a toolstack made for
                                     this domain) with this process's sockets; logs frontends coming and
                                     going. Its network is this process's: run it under
                                     \`ip netns exec NAME\` to give the guests a namespace of their own
  pvcalls connect HOST:PORT [--dev N] [--timeout MS]
                                     in a domU: one TCP connection through this domain's PVCalls
                                     frontend (device N, default 0), on stdin/stdout; exit 1 if it failed.
                                     PVCalls v1 has no shutdown: stdin's end is not seen by the remote
                                     end, and the connection ends when the remote end closes it
  mock env [--domid D]               print export lines that run any libxenvchan program on the mock:
                                     eval "$(npx xen-vchan mock env)"
  mock status [--json] | mock reset | mock introduce D... | mock destroy D

Backend: real Xen unless XEN_VCHAN_BACKEND=mock (demo and mock default to the mock).`;

/** The lines of USAGE about one command, for `xen-vchan <command> --help`. */
export function commandUsage(cmd: string): string {
  const lines = USAGE.split('\n');
  const out: string[] = [];
  let inCmd = false;
  for (const l of lines) {
    const m = /^ {2}(\S+)/.exec(l);
    if (m) inCmd = m[1] === cmd;
    if (inCmd && l.trim()) out.push(l);
  }
  return `usage: xen-vchan ${cmd} [options]\n\n${out.join('\n')}`;
}
