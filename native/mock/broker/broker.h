/* xenmockd internals: the fake hypervisor's state, shared by its modules. */
#ifndef XENMOCKD_H
#define XENMOCKD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../include/xenmock_proto.h"
#include "../../include/xv_protocol.h"

#define DOMID_FIRST_RESERVED XV_DOMID_FIRST_RESERVED
#define DOMID_SELF XV_DOMID_SELF
#define NR_VIRQS 24
#define VIRQ_DOM_EXC 3
#define MAX_PORTS 131072u        /* the FIFO event channel ABI's limit */
#define MAX_GRANT_ENTRIES 32768u /* 64 grant frames of v1 entries */
#define FIRST_GRANT_REF 8u       /* Xen reserves the first eight entries */

struct conn;
struct share;

enum port_state { PORT_FREE = 0, PORT_UNBOUND, PORT_INTERDOMAIN, PORT_VIRQ };

struct port {
    enum port_state state;
    uint32_t remote_dom;  /* unbound: who may bind; interdomain: peer domain */
    uint32_t remote_port; /* interdomain: peer port */
    int virq;
    struct conn *owner; /* the evtchn handle it is bound to (NULL: not bound to any handle) */
    bool is_static;     /* pre-bound from the configuration; survives its handle */
    bool phantom;       /* bound with BIND_STATIC although Xen never allocated it: no events */
    bool kept;          /* taken with BIND_STATIC: Linux never closes it, so unbind leaves it bound */
    bool pending;       /* an event came while no handle held it: delivered to the next one */
    uint32_t gen;       /* changes whenever what the port is connected to changes (xm_evt_gen) */
    int refs;           /* unmap notifications that will still signal it */
};

/* Two evtchn handles with channels between their ports (xenmock_proto.h, "Event channels"). */
struct link {
    uint32_t id;
    struct conn *end[2]; /* end[0] == end[1]: a handle linked to itself */
    int memfd;           /* two xm_evt_bits */
    int wake[2];         /* eventfds: wake[e] wakes end e (a self link uses wake[0]) */
    struct link *next;
};

struct domain {
    uint32_t id;
    int nconn;
    struct port *ports; /* indexed by port number; 0 is never used */
    uint32_t ports_cap;
    int virq_port[NR_VIRQS];
    struct grant_entry *grants; /* indexed by grant ref */
    uint32_t grants_cap;
    uint32_t grants_used;
    uint32_t grants_free; /* every ref below it (from FIRST_GRANT_REF) is in use */
    uint32_t shared_pages;
    uint32_t mapped_pages;
};

struct grant_entry {
    struct share *sh; /* NULL: free */
    uint32_t page;
};

struct share {
    uint32_t id;
    struct conn *owner;
    uint32_t dom, grantee;
    int memfd, rofd;
    uint32_t npages;
    uint32_t *refs;
    bool writable;
    uint32_t notify_off, notify_port;
    int refcnt; /* the sharer, plus one per mapping */
};

struct mapping {
    uint32_t id;
    uint32_t count;
    struct share **sh; /* per page */
    uint32_t *page;    /* per page: index within its share */
    uint32_t notify_off, notify_port;
};

/* Ids to objects (grant.c: a handle's shares or mappings). */
struct idmap {
    uint32_t *keys; /* 0: an empty slot (ids start at 1) */
    void **vals;
    uint32_t cap, len; /* cap: 0 or a power of two */
};

struct outmsg {
    struct outmsg *next;
    size_t len;
    char data[];
};

struct txn;
struct watch;

struct conn {
    int fd;
    int kind;
    uint32_t dom;
    pid_t pid;
    bool hello;
    /* evtchn */
    int evfd;                /* the handle's own wake eventfd */
    struct xm_evt_gen *gen;  /* its generation page (read-only to it) */
    struct xm_evt_bits *own; /* the broker's own events for it */
    uint32_t restrict_dom;
    /* gntshr / gnttab: the handle's shares (gntshr) or mappings (gnttab) by id */
    struct idmap held;
    uint32_t next_id;
    /* xenstore */
    int watchfd;
    bool watch_polled, watch_writing; /* conn.c: the watch socket's epoll registration */
    struct outmsg *wq_head, *wq_tail;
    size_t wq_bytes;
    struct txn *txns;
    int ntxns;
    struct conn *prev, *next;
};

/* Rooms, bottom up. Each calls only the rooms listed before it (and logmsg).
 *   log.c      logmsg
 *   domains.c  the domain registry, destroyed domains
 *   evtchn.c   event channels            grant.c  grant tables (signals unmap notifications)
 *   store_tree.c <- store_watch.c <- store_ops.c <- store_txn.c <- store.c   xenstore (store.h)
 *   conn.c     connections: accept, reply, close (releasing what each room holds for the handle)
 *   control.c  control requests: stats, static channels, VIRQs, reset, introduce, destroy
 *   serve.c    the broker's lifecycle, its epoll loop and request dispatch
 *   main.c     the CLI */

/* log.c */
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* domains.c */
extern uint32_t destroying_domain;      /* the domain being destroyed, or XM_NONE */
struct domain *domain_get(uint32_t id); /* existing or NULL */
struct domain *domain_get_or_create(uint32_t id);
bool domain_exists(uint32_t id);
uint32_t domain_ports_in_use(struct domain *d);
void domain_free(uint32_t id);
void domain_free_all(void);
bool domain_is_destroyed(uint32_t dom);
void domain_set_destroyed(uint32_t dom, bool on);
void domain_forget_destroyed(void);

/* conn.c: epoll tags tell the listening socket, a connection and its watch socket apart. */
#define TAG_LISTEN ((uint64_t)0)
#define TAG_WATCH 1u
extern struct conn *conns;
extern int nconns;
extern int epfd;
extern bool conns_changed; /* a connection was freed: pending epoll events may name it */
void conn_ep_add(int fd, uint64_t tag, uint32_t events);
void conn_accept(int lfd);
void conn_close(struct conn *c);
int conn_send_reply(struct conn *c, struct xm_msg *r, const void *payload, int *fds, int nfds);
void conn_sync_watch_sockets(void);

/* control.c */
extern bool broker_stopping; /* shutdown asked (or a signal): the loop ends */
int ctl_dispatch(struct conn *c, struct xm_msg *m, struct xm_msg *r, char *rbuf);

/* serve.c */
int serve(const char *dir, bool daemonize);

/* evtchn.c */
int evtchn_dispatch(struct conn *c, struct xm_msg *m, struct xm_msg *r, char *rbuf, int *out_fds, int *n_out);
int evtchn_conn_open(struct conn *c, int *out_fds, int *n_out); /* the hello's three descriptors */
void evtchn_conn_closed(struct conn *c);
int evtchn_send(struct domain *d, uint32_t port);
int evtchn_port_get(struct domain *d, uint32_t port); /* takes a reference for an unmap notify */
void evtchn_port_put(struct domain *d, uint32_t port);
int evtchn_static_add(uint32_t d, uint32_t p, uint32_t rd, uint32_t rp);
int evtchn_alloc_unbound(uint32_t caller, uint32_t dom, uint32_t remote, struct xm_msg *r);
int evtchn_raise_virq(uint32_t d, uint32_t virq);
void evtchn_domain_close_all(struct domain *d); /* every port, static ones too */

/* grant.c */
int grant_dispatch(struct conn *c, struct xm_msg *m, const char *pl, int in_fd, struct xm_msg *r, char *rbuf,
                   int *out_fds, int *n_out_fds);
void grant_conn_closed(struct conn *c);

/* store*.c: requests (store.c), watches (store_watch.c) */
void store_init(void);
void store_reset(void);
int store_dispatch(struct conn *c, struct xm_msg *m, const char *pl, int in_fd, struct xm_msg *r, char *rbuf);
void store_conn_closed(struct conn *c);
void store_domain_introduced(uint32_t dom);
void store_domain_released(uint32_t dom);
void store_domain_destroyed(uint32_t dom); /* removes /local/domain/DOM, fires @releaseDomain */
bool store_domain_known(uint32_t dom);     /* /local/domain/DOM exists */
uint32_t store_count_nodes(uint32_t dom);
void store_owners(uint8_t *bits); /* sets bit N for every domain N owning a node */
uint32_t store_count_watches(uint32_t dom);
void store_flush_watches(struct conn *c);
/* Set when a connection gets a watch socket or its queue fills or empties: only then does
 * conn_sync_watch_sockets() walk the connections (10,000 of them in the bench). */
extern bool watch_sockets_stale;

#endif
