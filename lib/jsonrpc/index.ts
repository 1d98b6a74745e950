/**
 * JSON requests and replies over a byte stream (a VchanStream, or any Duplex): the layer the PCI
 * daemon (pcid) is built on, for protocols of your own too.
 *
 * Each message is one JSON object followed by `\r\n`, as Xen's pcid series and QEMU's QMP frame
 * them; messages are split and joined across any chunking. The client gives every request an `id`
 * (an integer, unique on the channel) that the server echoes unchanged, so many requests can be in
 * flight on one channel and their replies come back in any order. A reply without an `id` (a server
 * that does not echo ids, such as pcid v4) answers the oldest request still unanswered.
 *
 * Both sides enforce a maximum message size (1 MiB by default): a client that gets a longer reply
 * fails every request in flight with EMSGSIZE and closes the channel; a server that gets a longer
 * request closes that channel. Backpressure both ways: a client has at most `maxInFlight` requests
 * on the wire (the rest wait their turn, unwritten), and a server stops reading while it has
 * `concurrency` requests being handled or its replies are not being read.
 *
 * The files: framing.ts (the messages), client.ts (JsonClient), serve.ts (serveJson).
 */
export { encodeMessage, JSON_MAX_MESSAGE, MessageSplitter, rawIdText } from './framing';
export {
  JsonClient,
  type JsonClientEvents,
  type JsonClientOptions,
  type JsonClientPending,
  type RequestOptions,
} from './client';
export { serveJson, type JsonServeOptions, type JsonService } from './serve';
