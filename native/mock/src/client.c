/*
 * libxenmock.so.1: the transport every mock Xen library uses to reach the
 * broker, plus the control API of xenmock.h.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xv_protocol.h>
#include "client.h"
#include "../include/xenmock.h"

extern char **environ;

static __thread int thread_domid = -1;

XM_EXPORT int xenmock_set_thread_domid(int domid)
{
    if (domid < -1 || domid > (int)XV_MAX_DOMID) {
        errno = EINVAL;
        return -1;
    }
    thread_domid = domid;
    return 0;
}

int xm_current_domid(void)
{
    if (thread_domid >= 0)
        return thread_domid;
    const char *s = getenv("XEN_MOCK_DOMID");
    if (!s || !*s)
        return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > (long)XV_MAX_DOMID)
        return -1;
    return (int)v;
}

XM_EXPORT int xenmock_current_domid(void)
{
    return xm_current_domid();
}

static pthread_once_t dir_once = PTHREAD_ONCE_INIT;
static char mock_dir[PATH_MAX];

static void dir_init(void)
{
    const char *d = getenv("XEN_MOCK_DIR");
    if (d && *d) {
        snprintf(mock_dir, sizeof(mock_dir), "%s", d);
        return;
    }
    const char *rt = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (rt && *rt && stat(rt, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid())
        snprintf(mock_dir, sizeof(mock_dir), "%s/xen-mock", rt);
    else
        snprintf(mock_dir, sizeof(mock_dir), "/tmp/xen-mock-%u", (unsigned)getuid());
}

XM_EXPORT const char *xenmock_dir(void)
{
    pthread_once(&dir_once, dir_init);
    return mock_dir;
}

/* Creates the directory if needed and refuses one another user could tamper with. */
static int ensure_dir(void)
{
    const char *d = xenmock_dir();
    if (mkdir(d, 0700) < 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (lstat(d, &st) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        fprintf(stderr,
                "xen-mock: refusing unsafe XEN_MOCK_DIR %s (must be a directory owned by uid %u, "
                "not writable by others)\n",
                d, (unsigned)geteuid());
        errno = EACCES;
        return -1;
    }
    return 0;
}

static int sock_addr(struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    int n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/xenmockd.sock", xenmock_dir());
    if (n < 0 || (size_t)n >= sizeof(sa->sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* The broker binary sits in ../bin relative to this library (XEN_MOCK_BROKER overrides). */
static int broker_path(char *out, size_t cap)
{
    const char *env = getenv("XEN_MOCK_BROKER");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    Dl_info info;
    if (!dladdr((void *)&xm_open, &info) || !info.dli_fname)
        return -1;
    char lib[PATH_MAX];
    if (!realpath(info.dli_fname, lib))
        return -1;
    char *slash = strrchr(lib, '/');
    if (!slash)
        return -1;
    *slash = 0;
    int n = snprintf(out, cap, "%s/../bin/xenmockd", lib);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

/* Starts "xenmockd serve --daemon"; the broker forks away and the intermediate exits at once. */
static void spawn_broker(void)
{
    char path[PATH_MAX];
    if (broker_path(path, sizeof(path)) < 0 || ensure_dir() < 0)
        return;
    char dirarg[PATH_MAX + 16];
    snprintf(dirarg, sizeof(dirarg), "--dir=%s", xenmock_dir());
    char *argv[] = {path, "serve", "--daemon", dirarg, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    const char *log = getenv("XEN_MOCK_LOG");
    if (log && *log)
        posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    else
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    /* The broker closes the other descriptors it inherits itself (xenmockd serve --daemon). */
    pid_t pid;
    if (posix_spawn(&pid, path, &fa, NULL, argv, environ) == 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    posix_spawn_file_actions_destroy(&fa);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int try_hello(int kind, int domid, int pass_fd, int *fds, int *nfds)
{
    struct sockaddr_un sa;
    if (sock_addr(&sa) < 0)
        return -1;
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    struct xm_msg m = {.op = XM_HELLO, .a = {kind, domid, (uint32_t)getpid(), XM_PROTO_VERSION}}, r;
    if (xm_call(s, &m, NULL, 0, pass_fd, &r, NULL, 0, fds, nfds) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

static int open_common(int kind, int pass_fd, int may_spawn, int *fds, int *nfds)
{
    int cap = nfds ? *nfds : 0;
    int domid = xm_current_domid();
    if (domid < 0) {
        fprintf(stderr, "xen-mock: XEN_MOCK_DOMID must be a domain id from 0 to %u\n", XV_MAX_DOMID);
        errno = EINVAL;
        return -1;
    }
    long deadline = now_ms() + 10000, last_spawn = -1000000;
    long delay = 2;
    for (;;) {
        if (nfds)
            *nfds = cap;
        int s = try_hello(kind, domid, pass_fd, fds, nfds);
        if (s >= 0)
            return s;
        int e = errno;
        /* A broker's own refusal (bad version, other uid) is final; transport trouble is retried. */
        if (e != ENOENT && e != ECONNREFUSED && e != ECONNRESET && e != EPIPE && e != EAGAIN)
            return -1;
        if (!may_spawn) {
            errno = ECONNREFUSED;
            return -1;
        }
        long t = now_ms();
        if (t > deadline) {
            fprintf(stderr, "xen-mock: could not reach or start the broker in %s (set XEN_MOCK_LOG to see why)\n",
                    xenmock_dir());
            errno = e;
            return -1;
        }
        if ((e == ENOENT || e == ECONNREFUSED) && t - last_spawn > 500) {
            spawn_broker();
            last_spawn = now_ms();
        }
        sleep_ms(delay);
        if (delay < 50)
            delay *= 2;
    }
}

int xm_open(int kind, int pass_fd)
{
    return open_common(kind, pass_fd, 1, NULL, NULL);
}
int xm_open_fds(int kind, int *fds, int *nfds)
{
    return open_common(kind, -1, 1, fds, nfds);
}
int xm_open_existing(int kind)
{
    return open_common(kind, -1, 0, NULL, NULL);
}

int xm_call(int sock, struct xm_msg *req, const void *payload, uint32_t len, int send_fd, struct xm_msg *rep,
            void *rbuf, uint32_t rcap, int *fds, int *nfds)
{
    req->len = len;
    req->err = 0;
    struct iovec iov[2] = {{req, sizeof(*req)}, {(void *)payload, len}};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
    if (send_fd >= 0) {
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &send_fd, sizeof(int));
    }
    ssize_t n;
    while ((n = sendmsg(sock, &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    if (n < 0)
        return -1;

    union {
        char buf[CMSG_SPACE(sizeof(int) * XM_MAX_FDS)];
        struct cmsghdr align;
    } rctl;
    struct iovec riov[2] = {{rep, sizeof(*rep)}, {rbuf, rcap}};
    struct msghdr rh = {
        .msg_iov = riov, .msg_iovlen = rcap ? 2 : 1, .msg_control = rctl.buf, .msg_controllen = sizeof(rctl.buf)};
    while ((n = recvmsg(sock, &rh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (n < 0)
        return -1;
    int got = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&rh); c; c = CMSG_NXTHDR(&rh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int cnt = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < cnt; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (fds && nfds && got < *nfds)
                fds[got++] = fd;
            else
                close(fd);
        }
    }
    if (nfds)
        *nfds = got;
    if (n == 0) {
        errno = ECONNRESET; /* the broker went away */
        return -1;
    }
    if ((size_t)n < sizeof(*rep) || rep->len > rcap || (rh.msg_flags & MSG_TRUNC)) {
        for (int i = 0; fds && i < got; i++)
            close(fds[i]);
        if (nfds)
            *nfds = 0;
        errno = EPROTO;
        return -1;
    }
    if (rep->err) {
        for (int i = 0; fds && i < got; i++)
            close(fds[i]);
        if (nfds)
            *nfds = 0;
        errno = rep->err;
        return -1;
    }
    return 0;
}

int xm_post(int sock, uint32_t op, uint32_t a0)
{
    struct xm_msg m = {.op = op, .a = {a0}};
    ssize_t n;
    while ((n = send(sock, &m, sizeof(m), MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    return n < 0 ? -1 : 0;
}

/* ---- control API ---- */

static int ctl_simple(uint32_t op, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, int may_spawn)
{
    int s = may_spawn ? xm_open(XM_KIND_CTL, -1) : xm_open_existing(XM_KIND_CTL);
    if (s < 0)
        return -1;
    struct xm_msg m = {.op = op, .a = {a0, a1, a2, a3}}, r;
    int rc = xm_call(s, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
    int e = errno;
    close(s);
    errno = e;
    return rc;
}

XM_EXPORT int xenmock_stats(uint32_t domid, struct xenmock_stats *out, size_t max)
{
    int s = xm_open_existing(XM_KIND_CTL);
    if (s < 0)
        return errno == ECONNREFUSED ? 0 : -1;
    static const size_t cap = XM_MAX_PAYLOAD / sizeof(struct xm_stats);
    struct xm_stats *buf = malloc(cap * sizeof(*buf));
    if (!buf) {
        close(s);
        return -1;
    }
    struct xm_msg m = {.op = XM_CTL_STATS, .a = {domid}}, r;
    int rc = xm_call(s, &m, NULL, 0, -1, &r, buf, (uint32_t)(cap * sizeof(*buf)), NULL, NULL);
    int e = errno;
    close(s);
    if (rc < 0) {
        free(buf);
        errno = e;
        return -1;
    }
    size_t n = r.len / sizeof(*buf);
    for (size_t i = 0; i < n && i < max; i++) {
        /* The wire struct and the public one have the same layout; copy field by field all the same. */
        out[i].domid = buf[i].domid;
        out[i].connections = buf[i].connections;
        out[i].grants = buf[i].grants;
        out[i].mapped_pages = buf[i].mapped_pages;
        out[i].ports = buf[i].ports;
        out[i].watches = buf[i].watches;
        out[i].nodes = buf[i].nodes;
        out[i].transactions = buf[i].transactions;
    }
    free(buf);
    return (int)n;
}

XM_EXPORT int xenmock_static_evtchn_add(uint32_t domid, uint32_t port, uint32_t rdom, uint32_t rport)
{
    return ctl_simple(XM_CTL_STATIC_ADD, domid, port, rdom, rport, 1);
}

XM_EXPORT int xenmock_raise_virq(uint32_t domid, uint32_t virq)
{
    return ctl_simple(XM_CTL_RAISE_VIRQ, domid, virq, 0, 0, 1);
}

XM_EXPORT int xenmock_introduce_domain(uint32_t domid)
{
    return ctl_simple(XM_CTL_INTRODUCE, domid, 0, 0, 0, 1);
}

XM_EXPORT int xenmock_destroy_domain(uint32_t domid)
{
    return ctl_simple(XM_CTL_DESTROY, domid, 0, 0, 0, 1);
}

XM_EXPORT int xenmock_reset(void)
{
    int rc = ctl_simple(XM_CTL_RESET, 0, 0, 0, 0, 0);
    return (rc < 0 && errno == ECONNREFUSED) ? 0 : rc;
}

XM_EXPORT int xenmock_shutdown(void)
{
    int rc = ctl_simple(XM_CTL_SHUTDOWN, 0, 0, 0, 0, 0);
    return (rc < 0 && errno == ECONNREFUSED) ? 0 : rc;
}
