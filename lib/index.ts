/**
 * xen-vchan: Xen vchan streams, grant tables, event channels and xenstore for Node.js.
 *
 * ```js
 * const { createServer, connect } = require('xen-vchan');
 * // dom0
 * createServer({ domid: 5, path: 'data/vchan/5/echo' }, (s) => s.pipe(s)).listen();
 * // domain 5
 * const s = await connect({ domid: 0, path: '/local/domain/0/data/vchan/5/echo' });
 * ```
 *
 * @packageDocumentation
 */
export { type Backend, currentBackend, useBackend } from './native';
export {
  DEFAULT_RING_SIZE,
  DOMID_FIRST_RESERVED,
  LiveState,
  MAX_DOMID,
  MAX_RING_SIZE,
  XENSTORE_ABS_PATH_MAX,
  XENSTORE_REL_PATH_MAX,
} from './constants';
export { EventChannel, type AllocUnboundOptions, type EventChannelOptions, type EventChannelEvents } from './evtchn';
export {
  GrantMapper,
  GrantSharer,
  GrantStatus,
  MappedPages,
  PAGE_SIZE,
  SharedPages,
  type CopySegment,
  type GrantedBytes,
  type GrantStatusCode,
  type GrantOptions,
  type UnmapNotify,
} from './grants';
export {
  Xenstore,
  XenstoreTransaction,
  XenstoreWatch,
  type WatchEvent,
  type XenstoreOps,
  type XenstoreOptions,
  type XenstoreWatchEvents,
  type XsPermission,
} from './xenstore';
export {
  connect,
  connectMulti,
  createMultiServer,
  createServer,
  MAX_VCHAN_PATH,
  MULTI_QUEUE_MAX,
  VchanMultiServer,
  VchanServer,
  VchanStream,
  XEN_LIBXENVCHAN_MAX_PATH,
  type ConnectOptions,
  type MultiServerOptions,
  type ServerOptions,
  type StaticChannel,
  type VchanInfo,
  type VchanOnread,
  type VchanOnreadBuffer,
  type VchanOnreadView,
  type VchanRingState,
  type VchanMultiServerAddress,
  type VchanServerAddress,
  type VchanServerBase,
  type VchanServerEvents,
  type VchanStreamOptions,
} from './vchan';
export {
  mockAddStaticChannel,
  mockDestroyDomain,
  mockDir,
  mockEnv,
  mockIntroduceDomain,
  mockLibDir,
  mockRaiseVirq,
  mockReset,
  mockStats,
  type MockDomainStats,
} from './mock';
export { encodeFrame, FramedStream, FrameParser, FrameType, MAX_DATA, PROXY_VERSION } from './framed';
export {
  PROXY_CONNECT_TIMEOUT,
  proxyListen,
  proxyServe,
  VchanProxy,
  type ProxyListenOptions,
  type ProxyServeOptions,
  type SocketAddress,
  type TcpSocketAddress,
  type UnixSocketAddress,
  type VchanProxyEvents,
  type VchanProxyWaiting,
} from './proxy';
export {
  encodeMessage,
  JSON_MAX_MESSAGE,
  JsonClient,
  MessageSplitter,
  serveJson,
  type JsonClientEvents,
  type JsonClientOptions,
  type JsonClientPending,
  type JsonServeOptions,
  type JsonService,
  type RequestOptions,
} from './jsonrpc';
export {
  connectPcid,
  createPcidServer,
  handlePcidRequest,
  PCIBACK_FILES,
  PCID_COMMANDS,
  PciSysfs,
  PcidClient,
  PcidError,
  PcidServer,
  type PciResources,
  type PcidClientEvents,
  type PcidCommand,
  type PcidConnection,
  type PcidConnectOptions,
  type PcidReply,
  type PcidServerEvents,
  type PcidServerOptions,
} from './pcid';
export {
  connectPvcalls,
  PvcallsFrontend,
  PvcallsServer,
  PvcallsSocket,
  type PvcallsFrontendEvents,
  type PvcallsFrontendOptions,
  type PvcallsListenOptions,
  type PvcallsServerEvents,
} from './pvcalls/frontend';
export {
  createPvcallsBackend,
  PvcallsBackend,
  type PvcallsBackendEvents,
  type PvcallsBackendOptions,
  type PvcallsDataPumps,
} from './pvcalls/backend';
export {
  createPvcallsDevice,
  pvcallsPaths,
  removePvcallsDevice,
  XenbusState,
  type PvcallsDeviceIds,
  type PvcallsDevicePaths,
} from './pvcalls/xenbus';
export { BackRing, FrontRing, RingCorruptError } from './pvcalls/ring';
export { DataRing, type DataRingSide } from './pvcalls/data';
export * as pvcallsWire from './pvcalls/wire';
