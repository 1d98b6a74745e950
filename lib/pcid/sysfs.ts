/**
 * Linux's PCI sysfs as pcid acts on it (pciback's slots, drivers, resources, resets), under a root
 * it never leaves, and the checks on a request's arguments.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const SBDF = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;
const DRIVER = /^[A-Za-z0-9_.-]{1,64}$/;

/** A failed command: its reply carries `error: "failed"` and this message as `error_desc`. */
export class CommandError extends Error {}

/** An sbdf in v4's text form (`%04x:%02x:%02x.%01x`), or a CommandError. */
export function parseSbdf(v: unknown): string {
  if (v === undefined) throw new CommandError("No mandatory parameter 'sbdf'");
  if (typeof v !== 'string' || !SBDF.test(v)) throw new CommandError("Can't parse SBDF");
  return v.toLowerCase();
}

export function parseBool(v: unknown, name: string): boolean {
  if (v === undefined) throw new CommandError(`No mandatory parameter '${name}'`);
  if (typeof v !== 'boolean') throw new CommandError(`Parameter '${name}' must be a boolean`);
  return v;
}

/** A device's resources, as resource_list answers. */
export interface PciResources {
  /** Memory and I/O ranges, `0x<start> 0x<end> 0x<flags>` each (as v4). */
  iomem: string[];
  /** Its legacy IRQ (none if it has none). */
  irqs: number[];
}

/**
 * Linux's PCI sysfs under ROOT, confined to it: every path is resolved (symlinks followed) and used
 * only if it stays inside the root; files are written, never created.
 */
export class PciSysfs {
  /** The sysfs root, resolved (default /sys). */
  readonly root: string;
  readonly #real: string;

  constructor(root = '/sys') {
    this.root = path.resolve(root);
    this.#real = fs.realpathSync(this.root);
  }

  /** ROOT/REL resolved, or a CommandError when it does not exist or leads outside the root. */
  #resolve(rel: string): string {
    const p = path.join(this.root, rel);
    let real: string;
    try {
      real = fs.realpathSync(p);
    } catch (e) {
      throw new CommandError(`${rel}: ${(e as NodeJS.ErrnoException).code ?? 'ENOENT'}`);
    }
    if (real !== this.#real && !real.startsWith(`${this.#real}/`))
      throw new CommandError(`${rel} leads outside the sysfs root`);
    return real;
  }

  #exists(rel: string): boolean {
    try {
      this.#resolve(rel);
      return true;
    } catch {
      return false;
    }
  }

  #read(rel: string): string {
    return fs.readFileSync(this.#resolve(rel), 'utf8');
  }

  /** Writes TEXT to an existing file (sysfs attributes are never created). */
  #write(rel: string, text: string): void {
    const real = this.#resolve(rel);
    let fd: number;
    try {
      fd = fs.openSync(real, fs.constants.O_WRONLY | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW);
    } catch (e) {
      throw new CommandError(`${rel}: ${(e as NodeJS.ErrnoException).code}`);
    }
    try {
      fs.writeSync(fd, text);
    } catch (e) {
      throw new CommandError(`write ${text} to ${rel}: ${(e as NodeJS.ErrnoException).code}`);
    } finally {
      fs.closeSync(fd);
    }
  }

  get #pciback(): string {
    return 'bus/pci/drivers/pciback';
  }

  #needPciback(): void {
    if (!this.#exists(this.#pciback)) throw new CommandError('pciback driver is not loaded');
  }

  /** The devices bound to pciback (what can be passed through to a guest). */
  listAssignable(): string[] {
    this.#needPciback();
    return fs
      .readdirSync(this.#resolve(this.#pciback))
      .filter((n) => SBDF.test(n))
      .sort();
  }

  /** Whether pciback holds SBDF. */
  isAssigned(sbdf: string): boolean {
    this.#needPciback();
    try {
      fs.lstatSync(path.join(this.#resolve(this.#pciback), sbdf));
      return true;
    } catch {
      return false;
    }
  }

  #device(sbdf: string): string {
    const rel = `bus/pci/devices/${sbdf}`;
    this.#resolve(rel); // exists, inside the root
    return rel;
  }

  /** The name of the driver SBDF is bound to, or undefined. */
  driverOf(sbdf: string): string | undefined {
    const link = path.join(this.root, this.#device(sbdf), 'driver');
    let target: string;
    try {
      target = fs.readlinkSync(link);
    } catch {
      return undefined;
    }
    const name = path.basename(target);
    if (!DRIVER.test(name)) throw new CommandError(`${sbdf}: a driver name that cannot be right`);
    // It must be one of the PCI drivers under the root.
    this.#resolve(`bus/pci/drivers/${name}`);
    return name;
  }

  #hasSlot(sbdf: string): boolean {
    let text: string;
    try {
      text = this.#read(`${this.#pciback}/slots`);
    } catch {
      return false;
    }
    return text.split('\n').some((l) => l.trim().toLowerCase() === sbdf);
  }

  /** Unbinds SBDF from its driver and binds it to pciback; returns the driver it had. */
  makeAssignable(sbdf: string): string | undefined {
    this.#device(sbdf);
    this.#needPciback();
    if (this.isAssigned(sbdf)) return undefined;
    const driver = this.driverOf(sbdf);
    if (driver !== undefined) this.#write(`bus/pci/drivers/${driver}/unbind`, sbdf);
    if (!this.#hasSlot(sbdf)) this.#write(`${this.#pciback}/new_slot`, sbdf);
    this.#write(`${this.#pciback}/bind`, sbdf);
    return driver;
  }

  /** Unbinds SBDF from pciback (and its slot), and binds it to DRIVER if given. */
  revertAssignable(sbdf: string, driver: string | undefined): void {
    this.#device(sbdf);
    this.#needPciback();
    if (this.isAssigned(sbdf)) {
      this.#write(`${this.#pciback}/unbind`, sbdf);
      if (this.#hasSlot(sbdf)) this.#write(`${this.#pciback}/remove_slot`, sbdf);
    }
    if (driver !== undefined) {
      if (!DRIVER.test(driver)) throw new CommandError(`a driver name that cannot be right`);
      this.#write(`bus/pci/drivers/${driver}/bind`, sbdf);
    }
  }

  /** Function-level reset through pciback, else the device's own reset attribute. */
  reset(sbdf: string): void {
    const dev = this.#device(sbdf);
    if (this.#exists(`${this.#pciback}/do_flr`)) return this.#write(`${this.#pciback}/do_flr`, sbdf);
    if (this.#exists(`${dev}/reset`)) return this.#write(`${dev}/reset`, '1');
    throw new CommandError(`The kernel doesn't support reset from sysfs for PCI device ${sbdf}`);
  }

  /** The memory and I/O ranges (`0x<start> 0x<end> 0x<flags>`, as v4) and the legacy IRQ. */
  resources(sbdf: string): PciResources {
    const dev = this.#device(sbdf);
    const iomem: string[] = [];
    for (const line of this.#read(`${dev}/resource`).split('\n')) {
      const m = /^0x([0-9a-f]+) 0x([0-9a-f]+) 0x([0-9a-f]+)$/i.exec(line.trim());
      if (!m) continue;
      const [start, end, flags] = m.slice(1).map((h) => BigInt(`0x${h}`));
      if (start !== 0n) iomem.push(`0x${start.toString(16)} 0x${end.toString(16)} 0x${flags.toString(16)}`);
    }
    const irqs: number[] = [];
    if (this.#exists(`${dev}/irq`)) {
      const irq = Number.parseInt(this.#read(`${dev}/irq`).trim(), 10);
      if (Number.isInteger(irq) && irq > 0) irqs.push(irq);
    }
    return { iomem, irqs };
  }

  /** Writes SBDF to one of pciback's files (PCIBACK_FILES). */
  writeBdf(sbdf: string, name: string): void {
    this.#device(sbdf);
    this.#needPciback();
    this.#write(`${this.#pciback}/${name}`, sbdf);
  }
}
