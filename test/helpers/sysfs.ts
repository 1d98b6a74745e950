/**
 * A fake PCI sysfs in a temporary directory, laid out as Linux's (bus/pci/devices/<sbdf> links to
 * the device directory, each device's `driver` links to its driver, drivers list their devices),
 * rebuilt from test/fixtures/sysfs-pci.json (what a real machine's /sys/bus/pci showed), plus
 * xen-pciback's directory with one device bound to it, as in a dom0 with pciback loaded.
 *
 * Next to the root it makes `outside/` with a file the server must never read or write, and
 * inside the root the traps a hostile client would reach for: a device link and a driver link that
 * lead outside.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { root as repo } from './env';

interface FixtureDevice {
  sbdf: string;
  dir: string;
  vendor?: string;
  device?: string;
  class?: string;
  irq?: string;
  resource?: string;
  reset: boolean;
  driver?: string;
}

export const fixture = JSON.parse(fs.readFileSync(path.join(repo, 'test', 'fixtures', 'sysfs-pci.json'), 'utf8')) as {
  devices: FixtureDevice[];
  drivers: string[];
};

/** The pciback files of a real xen-pciback, all write-only attributes except `slots`. */
const PCIBACK = [
  'bind',
  'unbind',
  'new_id',
  'remove_id',
  'new_slot',
  'remove_slot',
  'slots',
  'permissive',
  'quirks',
  'do_flr',
];

export interface FakeSysfs {
  /** The sysfs root to give the server. */
  root: string;
  /** A directory beside the root, never to be touched. */
  outside: string;
  /** The device bound to pciback from the start. */
  assigned: string;
  /** A device bound to another driver. */
  bound: { sbdf: string; driver: string };
  /** A device with a nonzero irq and memory resources. */
  withIrq: string;
  /** Reads ROOT/REL. */
  read(rel: string): string;
  /** Every file under the outside directory with its content and mtime (to prove nothing changed). */
  outsideState(): string;
  remove(): void;
}

export function makeFakeSysfs(): FakeSysfs {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'xv-sysfs-'));
  const root = path.join(base, 'sys');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(path.join(outside, 'dev'), { recursive: true });
  fs.writeFileSync(path.join(outside, 'secret'), 'do not read\n');
  for (const f of ['bind', 'unbind', 'reset', 'resource', 'irq', 'new_slot'])
    fs.writeFileSync(path.join(outside, 'dev', f), f === 'resource' ? '0x1 0x2 0x200\n' : '');
  const mk = (rel: string, content = '') => {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, content);
  };
  const link = (rel: string, target: string) => {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.symlinkSync(target, p);
  };
  const devices = fixture.devices.map((d) => ({ ...d }));
  // One device bound to pciback (as `xl pci-assignable-add` leaves it), one with an irq.
  const pciDevs = devices.filter((d) => d.driver !== undefined);
  const assigned = pciDevs[pciDevs.length - 1];
  assigned.driver = 'pciback';
  const withIrq = pciDevs[0];
  withIrq.irq = '11';
  const drivers = new Set([...fixture.drivers, 'pciback']);
  for (const drv of drivers)
    for (const f of drv === 'pciback' ? PCIBACK : ['bind', 'unbind', 'new_id', 'remove_id', 'uevent'])
      mk(`bus/pci/drivers/${drv}/${f}`);
  fs.writeFileSync(path.join(root, 'bus/pci/drivers/pciback/slots'), `${assigned.sbdf}\n`);
  for (const d of devices) {
    mk(`${d.dir}/vendor`, `${d.vendor ?? '0x0000'}\n`);
    mk(`${d.dir}/device`, `${d.device ?? '0x0000'}\n`);
    mk(`${d.dir}/class`, `${d.class ?? '0x000000'}\n`);
    mk(`${d.dir}/irq`, `${d.irq ?? '0'}\n`);
    mk(`${d.dir}/resource`, d.resource ?? '');
    mk(`${d.dir}/driver_override`, '(null)\n');
    if (d.reset) mk(`${d.dir}/reset`);
    const up = (rel: string) => '../'.repeat(rel.split('/').length - 1);
    link(`bus/pci/devices/${d.sbdf}`, `${up(`bus/pci/devices/${d.sbdf}`)}${d.dir}`);
    if (d.driver) {
      link(`${d.dir}/driver`, `${up(`${d.dir}/driver`)}bus/pci/drivers/${d.driver}`);
      link(`bus/pci/drivers/${d.driver}/${d.sbdf}`, `${up(`bus/pci/drivers/${d.driver}/${d.sbdf}`)}${d.dir}`);
    }
  }
  // The traps: a device whose directory is outside the root, and a device whose driver link leads
  // out of it.
  link('bus/pci/devices/0000:00:1f.7', path.join(outside, 'dev'));
  const trapDir = 'devices/pci0000:00/0000:00:1e.0';
  mk(`${trapDir}/resource`, '');
  link('bus/pci/devices/0000:00:1e.0', `../../../${trapDir}`);
  link(`${trapDir}/driver`, path.join(outside, 'dev'));
  const bound = pciDevs.find((d) => d !== assigned && d.driver)!;
  const state = () => {
    const out: string[] = [];
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else out.push(`${p} ${fs.statSync(p).mtimeMs} ${fs.readFileSync(p, 'utf8')}`);
      }
    };
    walk(outside);
    return out.sort().join('\n');
  };
  return {
    root,
    outside,
    assigned: assigned.sbdf,
    bound: { sbdf: bound.sbdf, driver: bound.driver! },
    withIrq: withIrq.sbdf,
    read: (rel) => fs.readFileSync(path.join(root, rel), 'utf8'),
    outsideState: state,
    remove: () => fs.rmSync(base, { recursive: true, force: true }),
  };
}
