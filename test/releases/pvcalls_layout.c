/*
 * Prints, as JSON, the layout of PVCalls' structures as Xen's public header declares it
 * (xen/io/pvcalls.h from libxen-dev): test/pvcalls-wire.test.ts compares lib/pvcalls/wire.ts with it.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <xen/io/pvcalls.h>

#define OFF(type, member) (unsigned)offsetof(type, member)

int main(void)
{
    typedef struct xen_pvcalls_request rq;
    typedef struct xen_pvcalls_response rs;
    typedef struct pvcalls_data_intf di;
    printf("{\"cmds\":[%d,%d,%d,%d,%d,%d,%d],", PVCALLS_SOCKET, PVCALLS_CONNECT, PVCALLS_RELEASE, PVCALLS_BIND,
           PVCALLS_LISTEN, PVCALLS_ACCEPT, PVCALLS_POLL);
    printf("\"requestSize\":%u,\"responseSize\":%u,\"slotSize\":%u,\"ringSlots\":%u,", (unsigned)sizeof(rq),
           (unsigned)sizeof(rs), (unsigned)sizeof(union xen_pvcalls_sring_entry),
           (unsigned)__CONST_RING_SIZE(xen_pvcalls, 4096));
    printf("\"sring\":{\"reqProd\":%u,\"reqEvent\":%u,\"rspProd\":%u,\"rspEvent\":%u,\"ring\":%u},",
           OFF(struct xen_pvcalls_sring, req_prod), OFF(struct xen_pvcalls_sring, req_event),
           OFF(struct xen_pvcalls_sring, rsp_prod), OFF(struct xen_pvcalls_sring, rsp_event),
           OFF(struct xen_pvcalls_sring, ring));
    printf("\"req\":{\"reqId\":%u,\"cmd\":%u,\"id\":%u,", OFF(rq, req_id), OFF(rq, cmd), OFF(rq, u.socket.id));
    printf("\"socket\":{\"domain\":%u,\"type\":%u,\"protocol\":%u},", OFF(rq, u.socket.domain), OFF(rq, u.socket.type),
           OFF(rq, u.socket.protocol));
    printf("\"connect\":{\"addr\":%u,\"len\":%u,\"flags\":%u,\"ref\":%u,\"evtchn\":%u},", OFF(rq, u.connect.addr),
           OFF(rq, u.connect.len), OFF(rq, u.connect.flags), OFF(rq, u.connect.ref), OFF(rq, u.connect.evtchn));
    printf("\"release\":{\"reuse\":%u},", OFF(rq, u.release.reuse));
    printf("\"bind\":{\"addr\":%u,\"len\":%u},", OFF(rq, u.bind.addr), OFF(rq, u.bind.len));
    printf("\"listen\":{\"backlog\":%u},", OFF(rq, u.listen.backlog));
    printf("\"accept\":{\"idNew\":%u,\"ref\":%u,\"evtchn\":%u}},", OFF(rq, u.accept.id_new), OFF(rq, u.accept.ref),
           OFF(rq, u.accept.evtchn));
    printf("\"addrSize\":%u,", (unsigned)sizeof(((rq *)0)->u.connect.addr));
    printf("\"rsp\":{\"reqId\":%u,\"cmd\":%u,\"ret\":%u,\"id\":%u},", OFF(rs, req_id), OFF(rs, cmd), OFF(rs, ret),
           OFF(rs, u.socket.id));
    printf("\"dataIntf\":{\"inCons\":%u,\"inProd\":%u,\"inError\":%u,\"outCons\":%u,\"outProd\":%u,\"outError\":%u,"
           "\"ringOrder\":%u,\"ref\":%u}}\n",
           OFF(di, in_cons), OFF(di, in_prod), OFF(di, in_error), OFF(di, out_cons), OFF(di, out_prod),
           OFF(di, out_error), OFF(di, ring_order), OFF(di, ref));
    return 0;
}
