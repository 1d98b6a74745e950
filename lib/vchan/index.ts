/**
 * vchan: a byte stream between two domains over shared rings, as a Node Duplex stream, with a
 * server and a client that feel like `net`.
 *
 * Reads and writes never block and never spin: when a ring is empty (or full) the stream asks
 * the peer to notify it and sleeps until the event channel fires. A peer that closes, or whose
 * process dies, ends the stream (its data first); a peer DOMAIN that is destroyed (it sends
 * nothing: see domains.ts) fails it with ECONNRESET; corrupt ring indices fail it with EPROTO.
 *
 * The files: stream.ts (VchanStream) with its hot path in buffers.ts, onread.ts and idle.ts;
 * options.ts (the options and their checks); offer.ts (a server's channel and its claim on a
 * path); server-base.ts (what both servers share), server.ts (VchanServer), multi-server.ts and
 * requests.ts (VchanMultiServer); connect.ts, multi-connect.ts and static.ts (the clients).
 */
export { VchanStream } from './stream';
export { createServer, VchanServer, type VchanServerAddress } from './server';
export { VchanServerBase, type VchanServerEvents } from './server-base';
export { connect } from './connect';
export { connectMulti } from './multi-connect';
export { createMultiServer, VchanMultiServer, type VchanMultiServerAddress } from './multi-server';
export {
  MAX_VCHAN_PATH,
  MULTI_QUEUE_MAX,
  XEN_LIBXENVCHAN_MAX_PATH,
  type ConnectOptions,
  type MultiServerOptions,
  type ServerOptions,
  type StaticChannel,
  type VchanInfo,
  type VchanRingState,
  type VchanStreamOptions,
} from './options';
export { type VchanOnread, type VchanOnreadBuffer, type VchanOnreadView } from './onread';
