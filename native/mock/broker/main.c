/*
 * xenmockd: the mock hypervisor and xenstore daemon.
 *
 *   xenmockd serve [--daemon] [--dir=DIR]   run the broker (clients start it by themselves)
 *   xenmockd status [--json]                per-domain counts of live resources
 *   xenmockd reset | shutdown
 *   xenmockd static DOM:PORT DOM:PORT       pre-bind a static event channel pair
 *   xenmockd virq DOM VIRQ                  raise a virtual interrupt
 *   xenmockd introduce DOMID...             create domains' xenstore entries, as a toolstack does
 *   xenmockd destroy DOMID                  what `xl destroy` does (xenmock_destroy_domain)
 *
 * One process, one epoll loop, no threads. Each client handle is a
 * SOCK_SEQPACKET connection; when it closes (however its process ended) the
 * broker releases what the handle held, performing unmap notifications first,
 * exactly as Linux's gntalloc/gntdev do when a process dies.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "../include/xenmock.h"

struct conn *conns;
static int nconns;
static int epfd = -1, lfd = -1, lockfd = -1;
static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static struct domain *domains[DOMID_FIRST_RESERVED];
static bool stopping;
static const char *static_config;
static bool conns_changed; /* a connection was freed: pending epoll events may name it */

/* epoll tags: the low bit tells a connection's main socket from its watch socket. */
#define TAG_LISTEN ((uint64_t)0)
#define TAG_WATCH 1u

void logmsg(const char *fmt, ...)
{
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(ts, sizeof(ts), "%H:%M:%S", &tm);
    fprintf(stderr, "xenmockd[%d] %s: ", (int)getpid(), ts);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---- domains ---- */

struct domain *domain_get(uint32_t id) { return id < DOMID_FIRST_RESERVED ? domains[id] : NULL; }

struct domain *domain_get_or_create(uint32_t id)
{
    if (id >= DOMID_FIRST_RESERVED)
        return NULL;
    if (!domains[id]) {
        struct domain *d = calloc(1, sizeof(*d));
        if (!d)
            return NULL;
        d->id = id;
        for (int i = 0; i < NR_VIRQS; i++)
            d->virq_port[i] = -1;
        domains[id] = d;
    }
    return domains[id];
}

/* A domain exists while one of its processes has a handle open, or it holds ports (static ones). */
bool domain_exists(uint32_t id)
{
    struct domain *d = domain_get(id);
    return d && (d->nconn > 0 || evtchn_count(d) > 0);
}

static void domain_free(uint32_t id)
{
    struct domain *d = domains[id];
    if (!d)
        return;
    evtchn_domain_free(d);
    free(d->grants);
    free(d);
    domains[id] = NULL;
}

/* ---- connections ---- */

static void ep_add(int fd, uint64_t tag, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

void watchfd_register(struct conn *c) { ep_add(c->watchfd, (uint64_t)(uintptr_t)c | TAG_WATCH, 0); }

void watchfd_want_write(struct conn *c, bool on)
{
    struct epoll_event ev = {.events = on ? EPOLLOUT : 0, .data.u64 = (uint64_t)(uintptr_t)c | TAG_WATCH};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->watchfd, &ev);
}

static void conn_close(struct conn *c)
{
    if (c->hello) {
        switch (c->kind) {
        case XM_KIND_EVTCHN: evtchn_conn_closed(c); break;
        case XM_KIND_GNTTAB:
        case XM_KIND_GNTSHR: grant_conn_closed(c); break;
        case XM_KIND_XS: store_conn_closed(c); break;
        default: break;
        }
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->evfd >= 0)
        close(c->evfd);
    if (c->watchfd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->watchfd, NULL);
        close(c->watchfd);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    nconns--;
    conns_changed = true;
    if (c->hello && c->kind != XM_KIND_CTL) {
        struct domain *d = domain_get(c->dom);
        if (d && --d->nconn == 0) {
            logmsg("domain %u has no handles left", c->dom);
            store_domain_released(c->dom);
            if (c->dom != 0)
                evtchn_raise_virq(0, VIRQ_DOM_EXC);
            if (!domain_exists(c->dom) && d->grants_used == 0 && d->mapped_pages == 0)
                domain_free(c->dom);
        }
    }
    free(c);
}

static void accept_conn(void)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        struct ucred cred;
        socklen_t cl = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || cred.uid != geteuid()) {
            logmsg("refusing a connection from uid %d", (int)cred.uid);
            close(fd);
            continue;
        }
        struct conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->evfd = -1;
        c->watchfd = -1;
        c->pid = cred.pid;
        c->restrict_dom = XM_NONE;
        c->next = conns;
        if (conns)
            conns->prev = c;
        conns = c;
        nconns++;
        ep_add(fd, (uint64_t)(uintptr_t)c, EPOLLIN);
    }
}

static int send_reply(struct conn *c, struct xm_msg *r, const void *payload, int *fds, int nfds)
{
    struct iovec iov[2] = {{r, sizeof(*r)}, {(void *)payload, r->len}};
    union {
        char buf[CMSG_SPACE(sizeof(int) * XM_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = r->len ? 2 : 1};
    if (nfds > 0) {
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    /* The socket is non-blocking for reads; a reply must not be dropped, so wait for room. */
    for (;;) {
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        return -1;
    }
}

/* Domains destroyed and not introduced again since. On Xen a destroyed domain runs nothing more: a
 * handle it asks for after its destruction (a process that connects before its SIGKILL lands, or
 * whose hello is still queued in the socket) must not bring it back, and the toolstack's
 * introduce is what makes the id usable again. */
static uint8_t destroyed[(DOMID_FIRST_RESERVED + 7) / 8];
static bool is_destroyed(uint32_t dom) { return dom < DOMID_FIRST_RESERVED && (destroyed[dom / 8] >> (dom % 8)) & 1; }
static void set_destroyed(uint32_t dom, bool on)
{
    if (dom >= DOMID_FIRST_RESERVED)
        return;
    if (on)
        destroyed[dom / 8] |= (uint8_t)(1u << (dom % 8));
    else
        destroyed[dom / 8] &= (uint8_t)~(1u << (dom % 8));
}

static int destroy_domain(struct conn *req, uint32_t dom);

static int ctl_dispatch(struct conn *c, struct xm_msg *m, struct xm_msg *r, char *rbuf)
{
    switch (m->op) {
    case XM_CTL_STATS: {
        size_t n = 0, max = XM_MAX_PAYLOAD / sizeof(struct xm_stats);
        struct xm_stats *out = (struct xm_stats *)rbuf;
        static uint8_t owners[DOMID_FIRST_RESERVED / 8];
        memset(owners, 0, sizeof(owners));
        store_owners(owners);
        for (uint32_t id = 0; id < DOMID_FIRST_RESERVED && n < max; id++) {
            struct domain *d = domains[id];
            bool owns = owners[id / 8] & (1u << (id % 8));
            /* Every domain with state or xenstore nodes, or just the one asked for. */
            if (m->a[0] != XM_NONE ? m->a[0] != id : (!d && !owns))
                continue;
            struct xm_stats *s = &out[n++];
            memset(s, 0, sizeof(*s));
            s->domid = id;
            s->nodes = owns ? store_count_nodes(id) : 0;
            s->watches = store_count_watches(id);
            if (d) {
                s->connections = (uint32_t)d->nconn;
                s->grants = d->grants_used;
                s->mapped_pages = d->mapped_pages;
                s->ports = evtchn_count(d);
            }
            for (struct conn *k = conns; k; k = k->next)
                if (k->hello && k->dom == id && k->kind == XM_KIND_XS)
                    s->transactions += (uint32_t)k->ntxns;
        }
        r->len = (uint32_t)(n * sizeof(struct xm_stats));
        return 0;
    }
    case XM_CTL_STATIC_ADD: return evtchn_static_add(m->a[0], m->a[1], m->a[2], m->a[3]);
    case XM_CTL_RAISE_VIRQ: {
        if (m->a[1] >= NR_VIRQS)
            return EINVAL;
        evtchn_raise_virq(m->a[0], m->a[1]);
        return 0;
    }
    case XM_CTL_RESET: {
        logmsg("reset requested by pid %d", (int)c->pid);
        for (struct conn *k = conns, *n; k; k = n) {
            n = k->next;
            if (k != c)
                conn_close(k);
        }
        for (uint32_t id = 0; id < DOMID_FIRST_RESERVED; id++)
            domain_free(id);
        memset(destroyed, 0, sizeof(destroyed));
        store_reset();
        return 0;
    }
    case XM_CTL_INTRODUCE:
        if (m->a[0] >= DOMID_FIRST_RESERVED)
            return EINVAL;
        set_destroyed(m->a[0], false);
        store_domain_introduced(m->a[0]);
        return 0;
    case XM_CTL_DESTROY: return destroy_domain(c, m->a[0]);
    case XM_CTL_SHUTDOWN:
        logmsg("shutdown requested by pid %d", (int)c->pid);
        stopping = true;
        return 0;
    default: return ENOSYS;
    }
}

uint32_t destroying_domain = XM_NONE;


/* `xl destroy`: the domain stops at once. Its handles are cut without the unmap notifications its
 * kernel would have sent, its ports close (peers become unbound, no event: Xen sends none), every
 * process living only in it is killed, the toolstack removes its xenstore directory, and
 * @releaseDomain fires. What other domains have mapped of its pages stays mapped. */
static int destroy_domain(struct conn *req, uint32_t dom)
{
    if (dom == 0)
        return EPERM;
    if (dom >= DOMID_FIRST_RESERVED)
        return EINVAL;
    struct domain *d = domain_get(dom);
    if (!d && !store_domain_known(dom))
        return ESRCH;
    logmsg("destroying domain %u (asked by pid %d)", dom, (int)req->pid);
    /* Processes with handles in this domain only. */
    pid_t victims[256];
    int nv = 0;
    for (struct conn *k = conns; k; k = k->next) {
        if (!k->hello || k->dom != dom || k->kind == XM_KIND_CTL || k->pid <= 1 || k->pid == req->pid ||
            k->pid == getpid())
            continue;
        bool only = true, seen = false;
        for (struct conn *o = conns; o; o = o->next)
            if (o->hello && o->pid == k->pid && o->kind != XM_KIND_CTL && o->dom != dom)
                only = false;
        for (int i = 0; i < nv; i++)
            seen = seen || victims[i] == k->pid;
        if (only && !seen && nv < (int)(sizeof(victims) / sizeof(victims[0])))
            victims[nv++] = k->pid;
    }
    for (int i = 0; i < nv; i++)
        kill(victims[i], SIGKILL);
    set_destroyed(dom, true);
    destroying_domain = dom;
    for (struct conn *k = conns, *n; k; k = n) {
        n = k->next;
        if (k->hello && k->dom == dom && k->kind != XM_KIND_CTL)
            conn_close(k);
    }
    destroying_domain = XM_NONE;
    /* Static channels belong to the domain, not to a handle: they go with it. */
    if ((d = domain_get(dom)) != NULL)
        evtchn_domain_close_all(d);
    store_domain_destroyed(dom);
    if ((d = domain_get(dom)) != NULL && d->nconn == 0 && d->grants_used == 0 && d->mapped_pages == 0)
        domain_free(dom);
    return 0;
}

static void handle_hello(struct conn *c, struct xm_msg *m, int in_fd, struct xm_msg *r)
{
    if (m->a[3] != XM_PROTO_VERSION) {
        r->err = EPROTONOSUPPORT;
        return;
    }
    if (m->a[0] < XM_KIND_EVTCHN || m->a[0] > XM_KIND_CTL || m->a[1] >= DOMID_FIRST_RESERVED) {
        r->err = EINVAL;
        return;
    }
    if (m->a[0] == XM_KIND_EVTCHN && in_fd < 0) {
        r->err = EINVAL;
        return;
    }
    if (m->a[0] != XM_KIND_CTL && is_destroyed(m->a[1])) {
        r->err = ESRCH; /* xl destroy'ed: gone until introduced again */
        return;
    }
    if (c->pid > 1 && kill(c->pid, 0) < 0 && errno == ESRCH) {
        r->err = ESRCH; /* a hello still queued from a process that has died since */
        return;
    }
    c->kind = (int)m->a[0];
    c->dom = m->a[1];
    c->hello = true;
    if (c->kind == XM_KIND_EVTCHN) {
        c->evfd = in_fd;
        fcntl(c->evfd, F_SETFL, O_NONBLOCK);
    }
    if (c->kind != XM_KIND_CTL) {
        struct domain *d = domain_get_or_create(c->dom);
        if (!d) {
            c->hello = false;
            r->err = ENOMEM;
            return;
        }
        if (d->nconn++ == 0) {
            logmsg("domain %u has its first handle (pid %d)", c->dom, (int)c->pid);
            store_domain_introduced(c->dom);
        }
    }
}

static char *rbuf_static;

/* Reads one request and answers it (asynchronous ops get no reply).
 * Returns 1 when one was served, 0 when none is queued, -1 when the connection ended. */
static int handle_request(struct conn *c)
{
    static char pl[XM_MAX_PAYLOAD + 1];
    struct xm_msg m;
    union {
        char buf[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov[2] = {{&m, sizeof(m)}, {pl, XM_MAX_PAYLOAD}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    if (n == 0)
        return -1;
    int in_fd = -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        int cnt = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < cnt; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (in_fd < 0)
                in_fd = fd;
            else
                close(fd);
        }
    }
    if ((size_t)n < sizeof(m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || m.len != (size_t)n - sizeof(m)) {
        logmsg("malformed message from pid %d; dropping the connection", (int)c->pid);
        if (in_fd >= 0)
            close(in_fd);
        return -1;
    }
    pl[m.len] = 0;

    if (m.op == XM_EVTCHN_NOTIFY || m.op == XM_EVTCHN_UNMASK) {
        if (c->hello && c->kind == XM_KIND_EVTCHN) {
            struct xm_msg r = {0};
            evtchn_dispatch(c, &m, &r);
        }
        if (in_fd >= 0)
            close(in_fd);
        return 1;
    }

    struct xm_msg r = {.op = m.op};
    int out_fds[XM_MAX_FDS], n_out = 0;
    char *rbuf = rbuf_static;
    if (m.op == XM_HELLO) {
        if (c->hello)
            r.err = EINVAL;
        else
            handle_hello(c, &m, in_fd, &r);
        if (r.err && in_fd >= 0)
            close(in_fd);
        in_fd = -1;
    } else if (!c->hello) {
        r.err = EPROTO;
    } else {
        int err;
        switch (c->kind) {
        case XM_KIND_EVTCHN: err = evtchn_dispatch(c, &m, &r); break;
        case XM_KIND_GNTTAB:
        case XM_KIND_GNTSHR: err = grant_dispatch(c, &m, pl, in_fd, &r, rbuf, out_fds, &n_out); in_fd = -1; break;
        case XM_KIND_XS: err = store_dispatch(c, &m, pl, in_fd, &r, rbuf); in_fd = -1; break;
        case XM_KIND_CTL: err = ctl_dispatch(c, &m, &r, rbuf); break;
        default: err = EINVAL;
        }
        r.err = err;
    }
    if (in_fd >= 0)
        close(in_fd);
    if (r.err)
        r.len = 0;
    int rc = send_reply(c, &r, rbuf, out_fds, n_out);
    for (int i = 0; i < n_out; i++)
        close(out_fds[i]);
    return rc < 0 ? -1 : 1;
}

/* ---- lifecycle ---- */

static int lock_instance(const char *dir)
{
    /* An abstract socket named after the directory's inode: bound by exactly one live broker, gone with it. */
    struct stat st;
    if (stat(dir, &st) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int len = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "xenmockd-lock/%u/%llx/%llx", (unsigned)geteuid(),
                       (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    if (bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void on_signal(int sig)
{
    (void)sig;
    stopping = true;
}

static long linger_ms(void)
{
    const char *s = getenv("XEN_MOCK_LINGER_MS");
    if (s && *s)
        return strtol(s, NULL, 10);
    return 2000;
}

static void apply_static_config(void)
{
    /* XEN_MOCK_STATIC_EVTCHN="0:10=5:12,0:11=6:12": pairs pre-bound at boot, like a dom0less device tree. */
    if (!static_config || !*static_config)
        return;
    char *copy = strdup(static_config), *save = NULL;
    for (char *tok = strtok_r(copy, ",; ", &save); tok; tok = strtok_r(NULL, ",; ", &save)) {
        unsigned d, p, rd, rp;
        if (sscanf(tok, "%u:%u=%u:%u", &d, &p, &rd, &rp) != 4 || evtchn_static_add(d, p, rd, rp) != 0)
            logmsg("ignoring static event channel entry '%s'", tok);
    }
    free(copy);
}

/* A broker started by a client library inherits whatever that process had open (posix_spawn's
 * closefrom action is glibc 2.34+, newer than the oldest glibc the prebuilds run on): close it all
 * but stdin/stdout/stderr, so no client's socket or file is held open by the broker. */
static void close_inherited_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    int keep = dirfd(d);
    int fds[256];
    for (;;) {
        size_t n = 0;
        struct dirent *e;
        while (n < sizeof(fds) / sizeof(fds[0]) && (e = readdir(d)) != NULL) {
            int fd = atoi(e->d_name);
            if (fd > 2 && fd != keep)
                fds[n++] = fd;
        }
        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++)
            close(fds[i]);
        rewinddir(d);
    }
    closedir(d);
}

static int serve(const char *dir, bool daemonize)
{
    if (daemonize)
        close_inherited_fds();
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        logmsg("cannot create %s: %s", dir, strerror(errno));
        return 1;
    }
    lockfd = lock_instance(dir);
    if (lockfd < 0)
        return 0; /* another broker serves this directory */
    if (daemonize) {
        pid_t p = fork();
        if (p < 0)
            return 1;
        if (p > 0)
            _exit(0);
        setsid();
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    if (snprintf(sock_path, sizeof(sock_path), "%s/xenmockd.sock", dir) >= (int)sizeof(sock_path)) {
        logmsg("XEN_MOCK_DIR is too long for a socket path");
        return 1;
    }
    unlink(sock_path); /* a stale one from a broker that was killed */
    lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, sock_path, sizeof(sock_path));
    mode_t old = umask(077);
    int brc = bind(lfd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (brc < 0 || listen(lfd, 512) < 0) {
        logmsg("cannot listen on %s: %s", sock_path, strerror(errno));
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    ep_add(lfd, TAG_LISTEN, EPOLLIN);
    rbuf_static = malloc(XM_MAX_PAYLOAD);
    static_config = getenv("XEN_MOCK_STATIC_EVTCHN");
    store_init();
    apply_static_config();
    logmsg("serving %s", dir);

    long linger = linger_ms();
    while (!stopping) {
        struct epoll_event evs[64];
        int timeout = nconns == 0 ? (int)(linger > 0 ? linger : 0) : -1;
        int n = epoll_wait(epfd, evs, 64, timeout);
        if (n < 0 && errno != EINTR)
            break;
        conns_changed = false;
        for (int i = 0; i < n && !conns_changed; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_LISTEN) {
                accept_conn();
                continue;
            }
            struct conn *c = (struct conn *)(uintptr_t)(tag & ~(uint64_t)TAG_WATCH);
            if (tag & TAG_WATCH) {
                store_flush_watches(c);
                continue;
            }
            /* Serve every queued request; EOF comes only after the last one, so nothing sent before a
             * process died is lost. */
            int rc;
            while ((rc = handle_request(c)) > 0)
                ;
            /* Once any connection is freed, later events of this batch may name it: poll again. */
            if (rc < 0)
                conn_close(c);
        }
        if (nconns == 0 && (n == 0 || linger <= 0))
            break; /* no client for the whole linger period */
    }
    logmsg("exiting");
    for (struct conn *c = conns, *nx; c; c = nx) {
        nx = c->next;
        conn_close(c);
    }
    unlink(sock_path);
    rmdir(dir); /* only if empty: leave nothing behind, touch nothing else */
    return 0;
}

/* ---- client commands ---- */

static int print_status(bool json)
{
    struct xenmock_stats st[1024];
    int n = xenmock_stats(XENMOCK_ALL_DOMAINS, st, 1024);
    if (n < 0) {
        perror("xenmockd: status");
        return 1;
    }
    if (json) {
        printf("{\"dir\":\"%s\",\"running\":%s,\"domains\":[", xenmock_dir(), n > 0 ? "true" : "false");
        for (int i = 0; i < n; i++)
            printf("%s{\"domid\":%u,\"connections\":%u,\"grants\":%u,\"mappedPages\":%u,\"ports\":%u,"
                   "\"watches\":%u,\"nodes\":%u,\"transactions\":%u}",
                   i ? "," : "", st[i].domid, st[i].connections, st[i].grants, st[i].mapped_pages, st[i].ports,
                   st[i].watches, st[i].nodes, st[i].transactions);
        printf("]}\n");
        return 0;
    }
    if (n == 0) {
        printf("mock hypervisor in %s: not running\n", xenmock_dir());
        return 0;
    }
    printf("mock hypervisor in %s\n%6s %8s %7s %7s %6s %8s %6s %5s\n", xenmock_dir(), "domid", "handles", "grants",
           "mapped", "ports", "watches", "nodes", "txns");
    for (int i = 0; i < n; i++)
        printf("%6u %8u %7u %7u %6u %8u %6u %5u\n", st[i].domid, st[i].connections, st[i].grants, st[i].mapped_pages,
               st[i].ports, st[i].watches, st[i].nodes, st[i].transactions);
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: xenmockd serve [--daemon] [--dir=DIR] | status [--json] | reset | shutdown |\n"
                    "       static DOM:PORT DOM:PORT | virq DOM VIRQ | introduce DOMID... | destroy DOMID\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve")) {
        bool daemonize = false;
        const char *dir = NULL;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--daemon"))
                daemonize = true;
            else if (!strncmp(argv[i], "--dir=", 6))
                dir = argv[i] + 6;
            else
                return usage();
        }
        if (dir)
            setenv("XEN_MOCK_DIR", dir, 1);
        return serve(xenmock_dir(), daemonize);
    }
    if (!strcmp(cmd, "dir")) {
        printf("%s\n", xenmock_dir());
        return 0;
    }
    if (!strcmp(cmd, "status"))
        return print_status(argc > 2 && !strcmp(argv[2], "--json"));
    if (!strcmp(cmd, "reset")) {
        if (xenmock_reset() < 0) {
            perror("xenmockd: reset");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "shutdown")) {
        if (xenmock_shutdown() < 0) {
            perror("xenmockd: shutdown");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "static") && argc == 4) {
        unsigned d, p, rd, rp;
        if (sscanf(argv[2], "%u:%u", &d, &p) != 2 || sscanf(argv[3], "%u:%u", &rd, &rp) != 2)
            return usage();
        if (xenmock_static_evtchn_add(d, p, rd, rp) < 0) {
            perror("xenmockd: static");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "introduce") && argc >= 3) {
        for (int i = 2; i < argc; i++) {
            if (xenmock_introduce_domain((uint32_t)strtoul(argv[i], NULL, 10)) < 0) {
                perror("xenmockd: introduce");
                return 1;
            }
        }
        return 0;
    }
    if (!strcmp(cmd, "destroy") && argc == 3) {
        if (xenmock_destroy_domain((uint32_t)strtoul(argv[2], NULL, 10)) < 0) {
            perror("xenmockd: destroy");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "virq") && argc == 4) {
        if (xenmock_raise_virq((uint32_t)strtoul(argv[2], NULL, 10), (uint32_t)strtoul(argv[3], NULL, 10)) < 0) {
            perror("xenmockd: virq");
            return 1;
        }
        return 0;
    }
    return usage();
}
