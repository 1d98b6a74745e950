/* The broker's life: one instance per directory (an abstract-socket lock), the listening socket,
 * one epoll loop with no threads, and the dispatch of each request to its room (hello, event
 * channels, grants, the store, control). The top room: it calls all the others. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker.h"

static int lfd = -1, lockfd = -1;
static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static const char *static_config;

static void handle_hello(struct conn *c, struct xm_msg *m, struct xm_msg *r, int *out_fds, int *n_out)
{
    if (m->a[3] != XM_PROTO_VERSION) {
        r->err = EPROTONOSUPPORT;
        return;
    }
    if (m->a[0] < XM_KIND_EVTCHN || m->a[0] > XM_KIND_CTL || m->a[1] >= DOMID_FIRST_RESERVED) {
        r->err = EINVAL;
        return;
    }
    if (m->a[0] != XM_KIND_CTL && domain_is_destroyed(m->a[1])) {
        r->err = ESRCH; /* xl destroy'ed: gone until introduced again */
        return;
    }
    if (c->pid > 1 && kill(c->pid, 0) < 0 && errno == ESRCH) {
        r->err = ESRCH; /* a hello still queued from a process that has died since */
        return;
    }
    if (m->a[0] == XM_KIND_EVTCHN) {
        int err = evtchn_conn_open(c, out_fds, n_out);
        if (err) {
            r->err = err;
            return;
        }
    }
    c->kind = (int)m->a[0];
    c->dom = m->a[1];
    c->hello = true;
    if (c->kind != XM_KIND_CTL) {
        struct domain *d = domain_get_or_create(c->dom);
        if (!d) {
            c->hello = false;
            if (c->kind == XM_KIND_EVTCHN)
                evtchn_conn_closed(c);
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
            int none = 0;
            evtchn_dispatch(c, &m, &r, NULL, NULL, &none);
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
            handle_hello(c, &m, &r, out_fds, &n_out);
        if (r.err) {
            for (int i = 0; i < n_out; i++)
                close(out_fds[i]);
            n_out = 0;
        }
    } else if (!c->hello) {
        r.err = EPROTO;
    } else {
        int err;
        switch (c->kind) {
        case XM_KIND_EVTCHN: err = evtchn_dispatch(c, &m, &r, rbuf, out_fds, &n_out); break;
        case XM_KIND_GNTTAB:
        case XM_KIND_GNTSHR:
            err = grant_dispatch(c, &m, pl, in_fd, &r, rbuf, out_fds, &n_out);
            in_fd = -1;
            break;
        case XM_KIND_XS:
            err = store_dispatch(c, &m, pl, in_fd, &r, rbuf);
            in_fd = -1;
            break;
        case XM_KIND_CTL: err = ctl_dispatch(c, &m, &r, rbuf); break;
        default: err = EINVAL;
        }
        r.err = err;
    }
    if (in_fd >= 0)
        close(in_fd);
    if (r.err)
        r.len = 0;
    int rc = conn_send_reply(c, &r, rbuf, out_fds, n_out);
    for (int i = 0; i < n_out; i++)
        close(out_fds[i]);
    return rc < 0 ? -1 : 1;
}

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
    broker_stopping = true;
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

int serve(const char *dir, bool daemonize)
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
    conn_ep_add(lfd, TAG_LISTEN, EPOLLIN);
    rbuf_static = malloc(XM_MAX_PAYLOAD);
    static_config = getenv("XEN_MOCK_STATIC_EVTCHN");
    store_init();
    apply_static_config();
    logmsg("serving %s", dir);

    long linger = linger_ms();
    while (!broker_stopping) {
        struct epoll_event evs[64];
        int timeout = nconns == 0 ? (int)(linger > 0 ? linger : 0) : -1;
        int n = epoll_wait(epfd, evs, 64, timeout);
        if (n < 0 && errno != EINTR)
            break;
        conns_changed = false;
        for (int i = 0; i < n && !conns_changed; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_LISTEN) {
                conn_accept(lfd);
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
        conn_sync_watch_sockets();
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
