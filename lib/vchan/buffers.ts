/**
 * The buffers of a stream's hot path: the pool reads land in, and the gathering of small writes.
 */

/*
 * Reads land in a pool shared by every stream of the process: a chunk handed to the consumer is a
 * view of it, never copied again; an idle stream holds no buffer at all. A pool is replaced when
 * less than MIN_READ is left in it (the old one lives on while chunks of it do).
 *
 * 64 KiB, below glibc's mmap threshold (128 KiB): a freed pool's memory goes back to malloc's heap
 * and the next pool reuses it warm. 256 KiB pools came from mmap (or a heap trimmed back) as fresh
 * pages, and the receiver paid about twice the page faults (bench/RESULTS.md, 2026-12-07).
 */
const POOL_SIZE = 64 * 1024;
const MIN_READ = 16 * 1024;
/** The pool now, and where its free part starts. */
export const pool = { buf: Buffer.alloc(0), off: 0 };

/** Room for the next read in pool.buf from pool.off (a fresh pool when too little is left). */
export function poolRoom(): number {
  if (pool.buf.length - pool.off < MIN_READ) {
    pool.buf = Buffer.allocUnsafeSlow(POOL_SIZE);
    pool.off = 0;
  }
  return pool.buf.length - pool.off;
}

/** The N bytes just read into the pool, as the consumer's chunk; the pool moves past them. */
export function poolTake(n: number): Buffer {
  const chunk = pool.buf.subarray(pool.off, pool.off + n);
  pool.off += n;
  return chunk;
}

/*
 * Small writes are gathered into one buffer for the whole process, reused by every gathering: a
 * fresh buffer per gathering (16 KiB at Writable's default highWaterMark) cost its malloc, its page
 * faults and a garbage collection to give it back. It is lent for one native call only: a stream
 * copies out what the ring did not take of it before that call returns (unshare).
 */
const SCRATCH_SIZE = 64 * 1024;
let scratch: Buffer | null = null;

/**
 * Writable's queue as the chunks for one native writev. Small chunks are copied into one buffer
 * first: handing the addon an array costs about 150 ns per element (reading and checking each
 * chunk through N-API), copying a 64-byte chunk in JavaScript about 20, so a burst of small
 * writes is cheaper as one chunk. Large chunks go as they are (the copy would cost more).
 */
const GATHER_BELOW = 1024; // average chunk size, bytes
export function gather(queue: { chunk: Buffer }[]): Uint8Array[] {
  const count = queue.length;
  let total = 0;
  for (let i = 0; i < count; i++) total += queue[i].chunk.byteLength;
  if (count < 4 || total >= GATHER_BELOW * count) return queue.map((c) => c.chunk);
  const buf =
    total <= SCRATCH_SIZE
      ? (scratch ??= Buffer.allocUnsafeSlow(SCRATCH_SIZE)).subarray(0, total)
      : Buffer.allocUnsafe(total);
  let off = 0;
  for (let i = 0; i < count; i++) off += queue[i].chunk.copy(buf, off);
  return [buf];
}

/** Copies what is left of P's gathered chunk out of the shared buffer, if it is in it. */
export function unshare(p: PendingWrite): void {
  const c = p.chunks[0];
  if (scratch === null || c.buffer !== scratch.buffer) return;
  p.chunks[0] = Buffer.from(c.subarray(p.offset));
  p.offset = 0;
}

/** A write waiting for ring space: what is left of its chunks (from OFFSET into the first). */
export interface PendingWrite {
  chunks: Uint8Array[];
  offset: number; // into chunks[0]
  cb: (err?: Error | null) => void;
}

/** Moves write P past the N bytes the ring took: true when nothing of it is left. */
export function advance(p: PendingWrite, n: number): boolean {
  let i = 0;
  let off = p.offset + n;
  while (i < p.chunks.length && off >= p.chunks[i].byteLength) off -= p.chunks[i++].byteLength;
  if (i === p.chunks.length) return true;
  if (i > 0) p.chunks.splice(0, i);
  p.offset = off;
  return false;
}
