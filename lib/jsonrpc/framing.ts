/** JSON messages on a byte stream: one object each, followed by `\r\n`, of a bounded size. */
import { systemError } from '../errors';

/** The default largest message, bytes (the `\r\n` included), as pcid's receive buffer limit. */
export const JSON_MAX_MESSAGE = 1 << 20;
const EOM = Buffer.from('\r\n');

/**
 * Splits a byte stream into `\r\n`-terminated messages, whatever the chunks' boundaries; throws
 * EMSGSIZE as soon as a message is longer than MAX (never buffering more than that).
 */
export class MessageSplitter {
  readonly #max: number;
  #parts: Buffer[] = [];
  #len = 0;

  constructor(max = JSON_MAX_MESSAGE) {
    this.#max = max;
  }

  /** Calls ON with every whole message (without its `\r\n`) in what has come so far. */
  push(chunk: Buffer, on: (message: Buffer) => void): void {
    let buf = chunk;
    // A `\r` that ended the previous chunk may pair with a `\n` that starts this one.
    let from = 0;
    if (this.#len > 0) {
      const last = this.#parts[this.#parts.length - 1];
      if (last[last.length - 1] === 0x0d && buf[0] === 0x0a) {
        const whole = Buffer.concat(this.#parts, this.#len);
        this.#parts = [];
        this.#len = 0;
        this.#emit(whole.subarray(0, whole.length - 1), on);
        from = 1;
      }
    }
    for (;;) {
      const i = buf.indexOf(EOM, from);
      if (i < 0) break;
      const piece = buf.subarray(from, i);
      if (this.#len > 0) {
        const whole = Buffer.concat([...this.#parts, piece], this.#len + piece.length);
        this.#parts = [];
        this.#len = 0;
        this.#emit(whole, on);
      } else {
        this.#emit(piece, on);
      }
      from = i + 2;
    }
    if (from < buf.length) {
      buf = buf.subarray(from);
      if (this.#len + buf.length > this.#max) throw tooBig(this.#len + buf.length, this.#max);
      this.#parts.push(buf);
      this.#len += buf.length;
    }
  }

  /** Bytes held of a message not yet whole. */
  get pending(): number {
    return this.#len;
  }

  #emit(message: Buffer, on: (message: Buffer) => void): void {
    if (message.length + 2 > this.#max) throw tooBig(message.length + 2, this.#max);
    on(message);
  }
}

function tooBig(n: number, max: number): Error {
  return systemError('EMSGSIZE', 'read', `a JSON message of more than ${max} bytes (${n} so far)`);
}

/** A message as bytes: JSON and `\r\n`; EMSGSIZE when longer than MAX. */
export function encodeMessage(msg: unknown, max = JSON_MAX_MESSAGE): Buffer {
  const b = Buffer.from(`${JSON.stringify(msg)}\r\n`);
  if (b.length > max) throw systemError('EMSGSIZE', 'write', `a JSON message of ${b.length} bytes (most: ${max})`);
  return b;
}

/**
 * The JSON text of the last top-level "id" member of TEXT (a JSON object that JSON.parse took), as
 * the sender wrote it; undefined when there is none. A reply echoes this text, so that an id comes
 * back byte for byte: numbers beyond 2^53 and strings with escapes included.
 */
export function rawIdText(text: string): string | undefined {
  let depth = 0;
  let found: string | undefined;
  let i = 0;
  const n = text.length;
  /** The index just past the string that starts at J (a '"'). */
  const endOfString = (j: number) => {
    for (j++; j < n; j++) {
      const c = text.charCodeAt(j);
      if (c === 0x5c) j++;
      else if (c === 0x22) return j + 1;
    }
    return n;
  };
  /** The index just past the value that starts at J (depth 1), skipping nested values. */
  const endOfValue = (j: number) => {
    let d = 0;
    for (; j < n; j++) {
      const c = text[j];
      if (c === '"') {
        j = endOfString(j) - 1;
        if (d === 0) return j + 1;
      } else if (c === '{' || c === '[') d++;
      else if (c === '}' || c === ']') {
        if (d === 0) return j;
        if (--d === 0) return j + 1;
      } else if (c === ',' && d === 0) return j;
    }
    return n;
  };
  let expectKey = false;
  while (i < n) {
    const c = text[i];
    if (c === '"') {
      const end = endOfString(i);
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, end)) as string;
        let j = end;
        while (j < n && text[j] !== ':') j++;
        j++;
        while (j < n && /\s/.test(text[j])) j++;
        const vEnd = endOfValue(j);
        if (key === 'id') found = text.slice(j, vEnd).trimEnd();
        i = vEnd;
        expectKey = false;
        continue;
      }
      i = end;
      continue;
    }
    if (c === '{') {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === '}' || c === ']') depth--;
    else if (c === '[') depth++;
    else if (c === ',' && depth === 1) expectKey = true;
    i++;
  }
  return found;
}

/** The reply REPLY as bytes, its `id` member the sender's own text RAWID. */
/** @internal */
export function encodeReply(reply: Record<string, unknown>, rawId: string, max: number): Buffer {
  const { id: _ours, ...rest } = reply;
  const body = JSON.stringify(rest);
  const b = Buffer.from(`${body.length > 2 ? `${body.slice(0, -1)},` : '{'}"id":${rawId}}\r\n`);
  if (b.length > max) throw systemError('EMSGSIZE', 'write', `a JSON message of ${b.length} bytes (most: ${max})`);
  return b;
}

/** @internal */
export const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** @internal */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
