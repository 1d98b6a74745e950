/** serveJson(): answers the JSON requests on one channel, each exactly once, its id echoed. */
import type { Duplex } from 'node:stream';
import { debuglog } from 'node:util';

import { checkInt, checkObject, invalidArgType } from '../errors';
import {
  encodeMessage,
  encodeReply,
  isObject,
  JSON_MAX_MESSAGE,
  MessageSplitter,
  rawIdText,
  strictUtf8,
} from './framing';

const debug = debuglog('xen-vchan');

/** Options of {@link serveJson}. */
export interface JsonServeOptions {
  /** Largest message either way, bytes: a longer request closes the channel. Default 1 MiB. */
  maxMessage?: number;
  /** Requests handled at once; reading stops while this many are. Default 16. */
  concurrency?: number;
  /**
   * The reply to a message that is not a JSON object (TEXT as received); undefined sends none.
   * Default: none.
   */
  malformed?: (text: string, error: Error) => Record<string, unknown> | undefined;
  /** Called when the channel fails (an oversize request, a write error). */
  onError?: (e: Error) => void;
}

/** What {@link serveJson} returns. */
export interface JsonService {
  /** Ends the stream (this side writes no more); replies still being made are dropped. */
  close(): void;
}

/**
 * Serves JSON requests on STREAM: HANDLER gets each request object and returns (or resolves with)
 * the reply object; the request's `id`, if any, is echoed in it. A handler that throws gets the
 * reply `{ error: message }` (protocols with their own error shape catch it themselves).
 */
export function serveJson(
  stream: Duplex,
  handler: (request: Record<string, unknown>) => Record<string, unknown> | Promise<Record<string, unknown>>,
  options: JsonServeOptions = {},
): JsonService {
  if (typeof handler !== 'function') throw invalidArgType('handler', 'of type function', handler);
  const o = checkObject('options', options);
  const max = o.maxMessage === undefined ? JSON_MAX_MESSAGE : checkInt('options.maxMessage', o.maxMessage, 64, 2 ** 30);
  const concurrency = o.concurrency === undefined ? 16 : checkInt('options.concurrency', o.concurrency, 1, 65536);
  const malformed = o.malformed as JsonServeOptions['malformed'];
  const onError = o.onError as JsonServeOptions['onError'];
  const splitter = new MessageSplitter(max);
  const waiting: Buffer[] = [];
  let active = 0;
  let replyBlocked = false;
  let failed = false;

  const fail = (e: Error) => {
    if (failed) return;
    failed = true;
    debug('json server: %s', e.message);
    onError?.(e);
    stream.destroy();
  };
  const flow = () => {
    if (failed) return;
    while (waiting.length > 0 && active < concurrency && !replyBlocked) handle(waiting.shift()!);
    if (active < concurrency && !replyBlocked && waiting.length === 0) stream.resume();
    else stream.pause();
  };
  /** Sends REPLY; RAWID, the request's id as its sender wrote it, goes back in it unchanged. */
  const send = (reply: Record<string, unknown>, rawId?: string) => {
    if (failed || stream.destroyed || stream.writableEnded) return; // after close(): dropped
    const encode = (r: Record<string, unknown>) =>
      rawId === undefined ? encodeMessage(r, max) : encodeReply(r, rawId, max);
    let bytes: Buffer;
    try {
      bytes = encode(reply);
    } catch (e) {
      bytes = encode({ error: (e as Error).message });
    }
    if (!stream.write(bytes) && !replyBlocked) {
      replyBlocked = true;
      stream.once('drain', () => {
        replyBlocked = false;
        flow();
      });
    }
  };
  // Replies to messages without an id (a client that does not send them matches replies by order,
  // as pcid v4's do) leave in the order the messages came; replies with ids leave when ready.
  const inOrder: { reply?: Record<string, unknown>; ready: boolean }[] = [];
  const flushInOrder = () => {
    while (inOrder.length > 0 && inOrder[0].ready) {
      const r = inOrder.shift()!.reply;
      if (r) send(r);
    }
  };
  const handle = (raw: Buffer) => {
    let text = '';
    let msg: unknown;
    try {
      // Bytes that are not UTF-8 make a bad message, never one decoded with U+FFFD in their place.
      try {
        text = strictUtf8.decode(raw);
      } catch {
        throw new SyntaxError('not valid UTF-8');
      }
      try {
        msg = JSON.parse(text);
      } catch {
        // (V8's own message quotes the sender's text; ours does not.)
        throw new SyntaxError('not valid JSON');
      }
      if (!isObject(msg)) throw new SyntaxError('not a JSON object');
    } catch (e) {
      inOrder.push({ reply: malformed?.(text, e as Error), ready: true });
      flushInOrder();
      return;
    }
    const request = msg;
    const rawId = request.id === undefined ? undefined : rawIdText(text);
    const slot: { reply?: Record<string, unknown>; ready: boolean } | null =
      request.id === undefined ? { ready: false } : null;
    if (slot) inOrder.push(slot);
    const reply = (r: Record<string, unknown>) => {
      if (!slot) return send(r, rawId);
      slot.reply = r;
      slot.ready = true;
      flushInOrder();
    };
    active++;
    Promise.resolve()
      .then(() => handler(request))
      .then(
        (r) => reply(isObject(r) ? r : { result: r }),
        (e: Error) => reply({ error: e instanceof Error ? e.message : String(e) }),
      )
      .finally(() => {
        active--;
        flow();
      });
  };

  stream.on('data', (chunk: Buffer) => {
    try {
      splitter.push(chunk, (m) => waiting.push(m));
    } catch (e) {
      fail(e as Error);
      return;
    }
    flow();
  });
  stream.on('error', (e) => fail(e));
  return {
    close() {
      stream.end();
    },
  };
}
