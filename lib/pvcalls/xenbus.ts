/**
 * What PVCalls needs of xenbus: the device's states, waiting for the other end's state through a
 * watch, and what a toolstack writes to create the device (xl does it for `pvcalls = ["backend=B"]`).
 */
import { Xenstore, type XenstoreWatch } from '../xenstore';
import { systemError } from '../errors';

/** xenbus states (xen/include/public/io/xenbus.h). */
export const XenbusState = {
  /** No state (the node is missing or not a number). */
  Unknown: 0,
  /** The device is being set up. */
  Initialising: 1,
  /** The end waits for the other's details (a backend, for the frontend's ring). */
  InitWait: 2,
  /** The frontend has published its ring and event channel. */
  Initialised: 3,
  /** Both ends are talking. */
  Connected: 4,
  /** The end is shutting the device down. */
  Closing: 5,
  /** The end has let go of the device. */
  Closed: 6,
  /** The device is being reconfigured (unused by PVCalls). */
  Reconfiguring: 7,
  /** Reconfiguration done (unused by PVCalls). */
  Reconfigured: 8,
} as const;

/** The state at PATH (…/state), or Unknown where it is missing or not a number. */
export async function readState(xs: Xenstore, dir: string): Promise<number> {
  const v = await xs.tryRead(`${dir}/state`);
  const n = v === undefined ? NaN : Number(v);
  return Number.isInteger(n) ? n : XenbusState.Unknown;
}

/**
 * Resolves with the state at DIR once PRED accepts it (checked at once and on every change),
 * rejects with ETIMEDOUT after TIMEOUT ms or with the signal's reason.
 */
export async function waitState(
  xs: Xenstore,
  dir: string,
  pred: (state: number) => boolean,
  timeout: number,
  signal?: AbortSignal,
): Promise<number> {
  const w: XenstoreWatch = await xs.watch(`${dir}/state`);
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await new Promise<number>((resolve, reject) => {
      const check = () =>
        void readState(xs, dir).then((s) => {
          if (pred(s)) resolve(s);
        }, reject);
      w.on('change', check);
      check();
      timer = setTimeout(
        () =>
          reject(systemError('ETIMEDOUT', 'xenbus', `${dir}/state did not reach the state awaited in ${timeout} ms`)),
        timeout,
      );
      if (signal) {
        onAbort = () => reject(signal.reason);
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    await w.close();
  }
}

/** The xenstore directories of a PVCalls device's two halves. */
export interface PvcallsDevicePaths {
  /** The frontend's: /local/domain/FRONTEND/device/pvcalls/DEV. */
  front: string;
  /** The backend's: /local/domain/BACKEND/backend/pvcalls/FRONTEND/DEV. */
  back: string;
}

/** Which device: the frontend's and backend's domains, and the device number (default 0). */
export interface PvcallsDeviceIds {
  /** The frontend's domain. */
  frontend: number;
  /** The backend's domain. */
  backend: number;
  /** The device number under device/pvcalls; default 0. */
  dev?: number;
}

/** Where the two halves of a PVCalls device live in xenstore. */
export function pvcallsPaths(frontend: number, backend: number, dev = 0): PvcallsDevicePaths {
  return {
    front: `/local/domain/${frontend}/device/pvcalls/${dev}`,
    back: `/local/domain/${backend}/backend/pvcalls/${frontend}/${dev}`,
  };
}

/**
 * Creates the device as a toolstack does (xl, for `pvcalls = ["backend=BACKEND"]` in FRONTEND's
 * configuration): the frontend's directory, owned by the frontend and readable by the backend,
 * and the backend's, owned by the backend and readable by the frontend, both in Initialising.
 * Run it in dom0 (or the toolstack's domain).
 */
export async function createPvcallsDevice(xs: Xenstore, o: PvcallsDeviceIds): Promise<PvcallsDevicePaths> {
  const { front, back } = pvcallsPaths(o.frontend, o.backend, o.dev ?? 0);
  await xs.transaction(async (tx) => {
    await tx.write(`${front}/backend`, back);
    await tx.write(`${front}/backend-id`, String(o.backend));
    await tx.write(`${front}/state`, String(XenbusState.Initialising));
    await tx.write(`${back}/frontend`, front);
    await tx.write(`${back}/frontend-id`, String(o.frontend));
    await tx.write(`${back}/online`, '1');
    await tx.write(`${back}/state`, String(XenbusState.Initialising));
    const fperm = [
      { domid: o.frontend, read: false, write: false },
      { domid: o.backend, read: true, write: false },
    ];
    const bperm = [
      { domid: o.backend, read: false, write: false },
      { domid: o.frontend, read: true, write: false },
    ];
    for (const p of [front, `${front}/backend`, `${front}/backend-id`, `${front}/state`])
      await tx.setPermissions(p, fperm);
    for (const p of [back, `${back}/frontend`, `${back}/frontend-id`, `${back}/online`, `${back}/state`])
      await tx.setPermissions(p, bperm);
  });
  return { front, back };
}

/** Removes the device as `xl destroy` does. */
export async function removePvcallsDevice(xs: Xenstore, o: PvcallsDeviceIds): Promise<void> {
  const { front, back } = pvcallsPaths(o.frontend, o.backend, o.dev ?? 0);
  await xs.rm(back).catch(() => undefined);
  await xs.rm(front).catch(() => undefined);
  // And the frontend's directory under the backend's, once it holds no other device.
  const perFrontend = back.slice(0, back.lastIndexOf('/'));
  if ((await xs.directory(perFrontend).catch(() => ['?'])).length === 0)
    await xs.rm(perFrontend).catch(() => undefined);
}
