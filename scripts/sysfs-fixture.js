'use strict';
// Writes test/fixtures/sysfs-pci.json: the PCI devices of a real sysfs (default /sys), as the pcid
// tests rebuild them in a temporary tree (test/helpers/sysfs.ts). Run on a machine whose devices
// the tests should look like: node scripts/sysfs-fixture.js [/sys] > test/fixtures/sysfs-pci.json
const fs = require('node:fs');
const path = require('node:path');

const root = process.argv[2] || '/sys';
const devdir = path.join(root, 'bus', 'pci', 'devices');
const read = (f) => {
  try {
    return fs.readFileSync(f, 'utf8');
  } catch {
    return undefined;
  }
};
const devices = fs
  .readdirSync(devdir)
  .sort()
  .map((sbdf) => {
    const d = path.join(devdir, sbdf);
    let driver;
    try {
      driver = path.basename(fs.readlinkSync(path.join(d, 'driver')));
    } catch {
      driver = undefined;
    }
    return {
      sbdf,
      // Where the device directory really is (bus/pci/devices/<sbdf> links there).
      dir: path.relative(root, fs.realpathSync(d)),
      vendor: read(path.join(d, 'vendor'))?.trim(),
      device: read(path.join(d, 'device'))?.trim(),
      class: read(path.join(d, 'class'))?.trim(),
      irq: read(path.join(d, 'irq'))?.trim(),
      resource: read(path.join(d, 'resource')),
      reset: fs.existsSync(path.join(d, 'reset')),
      driver,
    };
  });
const drivers = fs.readdirSync(path.join(root, 'bus', 'pci', 'drivers')).sort();
process.stdout.write(
  `${JSON.stringify({ source: `${root} on Linux ${require('node:os').release()}`, devices, drivers }, null, 2)}\n`,
);
