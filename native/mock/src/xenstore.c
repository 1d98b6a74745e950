/*
 * libxenstore.so.4 for the mock hypervisor. The store itself lives in the
 * broker; watch events arrive on a socket pair created on first use, whose
 * end here is what xs_fileno() returns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"
#include "../../include/xenstore.h"

struct xs_handle {
    int sock;
    int wsock; /* watch events; -1 until the first watch or xs_fileno() */
    pthread_mutex_t lock;
};

XM_EXPORT struct xs_handle *xs_open(unsigned long flags)
{
    (void)flags;
    /* A domain with no xenstore at all (a dom0less domU built without one): XEN_MOCK_NO_XENSTORE
     * set to anything but "" or "0" makes every connection fail, as opening a missing
     * /dev/xen/xenbus and socket would. */
    const char *none = getenv("XEN_MOCK_NO_XENSTORE");
    if (none && *none && strcmp(none, "0") != 0) {
        errno = ENOENT;
        return NULL;
    }
    int s = xm_open(XM_KIND_XS, -1);
    if (s < 0)
        return NULL;
    struct xs_handle *h = calloc(1, sizeof(*h));
    if (!h) {
        close(s);
        errno = ENOMEM;
        return NULL;
    }
    h->sock = s;
    h->wsock = -1;
    pthread_mutex_init(&h->lock, NULL);
    return h;
}

XM_EXPORT void xs_close(struct xs_handle *h)
{
    if (!h)
        return;
    close(h->sock);
    if (h->wsock >= 0)
        close(h->wsock);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

XM_EXPORT struct xs_handle *xs_daemon_open(void)
{
    return xs_open(0);
}
XM_EXPORT struct xs_handle *xs_domain_open(void)
{
    return xs_open(0);
}
XM_EXPORT struct xs_handle *xs_daemon_open_readonly(void)
{
    return xs_open(XS_OPEN_READONLY);
}
XM_EXPORT void xs_daemon_close(struct xs_handle *h)
{
    xs_close(h);
}
XM_EXPORT void xs_daemon_destroy_postfork(struct xs_handle *h)
{
    xs_close(h);
}

/* One request; the reply payload is returned in a malloc'd buffer (NUL-terminated) when OUT is given. */
static int call(struct xs_handle *h, uint32_t op, uint32_t t, uint32_t a1, const void *pl, uint32_t len, int send_fd,
                struct xm_msg *rep, char **out)
{
    char *buf = NULL;
    if (out) {
        buf = malloc(XM_MAX_PAYLOAD + 1);
        if (!buf) {
            errno = ENOMEM;
            return -1;
        }
    }
    struct xm_msg m = {.op = op, .a = {t, a1}}, r;
    pthread_mutex_lock(&h->lock);
    int rc = xm_call(h->sock, &m, pl, len, send_fd, &r, buf, buf ? XM_MAX_PAYLOAD : 0, NULL, NULL);
    int e = errno;
    pthread_mutex_unlock(&h->lock);
    if (rc < 0) {
        free(buf);
        errno = e;
        return -1;
    }
    if (buf) {
        buf[r.len] = 0;
        *out = buf;
    }
    if (rep)
        *rep = r;
    return 0;
}

static int path_ok(const char *path)
{
    if (!path) {
        errno = EINVAL;
        return 0;
    }
    return 1;
}

XM_EXPORT void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len)
{
    if (!path_ok(path))
        return NULL;
    struct xm_msg r;
    char *out;
    if (call(h, XM_XS_READ, t, 0, path, (uint32_t)strlen(path) + 1, -1, &r, &out) < 0)
        return NULL;
    if (len)
        *len = r.len;
    char *v = realloc(out, r.len + 1);
    return v ? v : out;
}

XM_EXPORT bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data, unsigned int len)
{
    if (!path_ok(path))
        return false;
    size_t pl = strlen(path) + 1;
    if (pl + len > XM_MAX_PAYLOAD) {
        errno = E2BIG;
        return false;
    }
    char *buf = malloc(pl + len);
    if (!buf) {
        errno = ENOMEM;
        return false;
    }
    memcpy(buf, path, pl);
    if (len)
        memcpy(buf + pl, data, len);
    int rc = call(h, XM_XS_WRITE, t, len, buf, (uint32_t)(pl + len), -1, NULL, NULL);
    int e = errno;
    free(buf);
    errno = e;
    return rc == 0;
}

static bool simple_path_op(struct xs_handle *h, uint32_t op, xs_transaction_t t, const char *path)
{
    if (!path_ok(path))
        return false;
    return call(h, op, t, 0, path, (uint32_t)strlen(path) + 1, -1, NULL, NULL) == 0;
}

XM_EXPORT bool xs_mkdir(struct xs_handle *h, xs_transaction_t t, const char *path)
{
    return simple_path_op(h, XM_XS_MKDIR, t, path);
}

XM_EXPORT bool xs_rm(struct xs_handle *h, xs_transaction_t t, const char *path)
{
    return simple_path_op(h, XM_XS_RM, t, path);
}

/* Splits a NUL-separated list into a vector whose strings live in the same allocation. */
static char **to_vector(const char *buf, uint32_t len, unsigned int *num)
{
    unsigned int n = 0;
    for (uint32_t i = 0; i < len; i++)
        if (buf[i] == 0)
            n++;
    char **v = malloc((n + 1) * sizeof(char *) + len);
    if (!v) {
        errno = ENOMEM;
        return NULL;
    }
    char *strs = (char *)(v + n + 1);
    memcpy(strs, buf, len);
    unsigned int k = 0;
    for (uint32_t i = 0; i < len && k < n; k++) {
        v[k] = strs + i;
        i += (uint32_t)strlen(strs + i) + 1;
    }
    v[n] = NULL;
    *num = n;
    return v;
}

XM_EXPORT char **xs_directory(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *num)
{
    if (!path_ok(path))
        return NULL;
    struct xm_msg r;
    char *out;
    if (call(h, XM_XS_DIRECTORY, t, 0, path, (uint32_t)strlen(path) + 1, -1, &r, &out) < 0)
        return NULL;
    unsigned int n = 0;
    char **v = to_vector(out, r.len, &n);
    free(out);
    if (v && num)
        *num = n;
    return v;
}

XM_EXPORT struct xs_permissions *xs_get_permissions(struct xs_handle *h, xs_transaction_t t, const char *path,
                                                    unsigned int *num)
{
    if (!path_ok(path))
        return NULL;
    struct xm_msg r;
    char *out;
    if (call(h, XM_XS_GET_PERMS, t, 0, path, (uint32_t)strlen(path) + 1, -1, &r, &out) < 0)
        return NULL;
    unsigned int n = r.len / 8;
    struct xs_permissions *p = malloc((n ? n : 1) * sizeof(*p));
    if (!p) {
        free(out);
        errno = ENOMEM;
        return NULL;
    }
    for (unsigned int i = 0; i < n; i++) {
        uint32_t w[2];
        memcpy(w, out + 8 * i, 8);
        p[i].id = w[0];
        p[i].perms = w[1];
    }
    free(out);
    if (num)
        *num = n;
    return p;
}

XM_EXPORT bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t, const char *path,
                                  struct xs_permissions *perms, unsigned int num)
{
    if (!path_ok(path) || (num && !perms) || num == 0 || num > 1024) {
        errno = EINVAL;
        return false;
    }
    size_t pl = strlen(path) + 1;
    size_t total = pl + (size_t)num * 8;
    if (total > XM_MAX_PAYLOAD) {
        errno = E2BIG;
        return false;
    }
    char *buf = malloc(total);
    if (!buf) {
        errno = ENOMEM;
        return false;
    }
    memcpy(buf, path, pl);
    for (unsigned int i = 0; i < num; i++) {
        uint32_t w[2] = {perms[i].id, perms[i].perms};
        memcpy(buf + pl + 8 * i, w, 8);
    }
    int rc = call(h, XM_XS_SET_PERMS, t, num, buf, (uint32_t)total, -1, NULL, NULL);
    int e = errno;
    free(buf);
    errno = e;
    return rc == 0;
}

static int ensure_watch_channel(struct xs_handle *h)
{
    pthread_mutex_lock(&h->lock);
    int have = h->wsock >= 0;
    pthread_mutex_unlock(&h->lock);
    if (have)
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    int rc = call(h, XM_XS_WATCH_CHANNEL, 0, 0, NULL, 0, sv[1], NULL, NULL);
    int e = errno;
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        errno = e;
        return -1;
    }
    pthread_mutex_lock(&h->lock);
    if (h->wsock < 0)
        h->wsock = sv[0];
    else
        close(sv[0]);
    pthread_mutex_unlock(&h->lock);
    return 0;
}

static bool watch_op(struct xs_handle *h, uint32_t op, const char *path, const char *token)
{
    if (!path || !token) {
        errno = EINVAL;
        return false;
    }
    if (op == XM_XS_WATCH && ensure_watch_channel(h) < 0)
        return false;
    size_t pl = strlen(path) + 1, tl = strlen(token) + 1;
    if (pl + tl > XM_MAX_PAYLOAD) {
        errno = E2BIG;
        return false;
    }
    char *buf = malloc(pl + tl);
    if (!buf) {
        errno = ENOMEM;
        return false;
    }
    memcpy(buf, path, pl);
    memcpy(buf + pl, token, tl);
    int rc = call(h, op, 0, 0, buf, (uint32_t)(pl + tl), -1, NULL, NULL);
    int e = errno;
    free(buf);
    errno = e;
    return rc == 0;
}

XM_EXPORT bool xs_watch(struct xs_handle *h, const char *path, const char *token)
{
    return watch_op(h, XM_XS_WATCH, path, token);
}

XM_EXPORT bool xs_unwatch(struct xs_handle *h, const char *path, const char *token)
{
    return watch_op(h, XM_XS_UNWATCH, path, token);
}

XM_EXPORT int xs_fileno(struct xs_handle *h)
{
    if (ensure_watch_channel(h) < 0)
        return -1;
    return h->wsock;
}

static char **recv_watch(struct xs_handle *h, int flags, unsigned int *num)
{
    if (ensure_watch_channel(h) < 0)
        return NULL;
    char buf[XM_MAX_PAYLOAD];
    ssize_t n;
    while ((n = recv(h->wsock, buf, sizeof(buf), flags)) < 0 && errno == EINTR)
        ;
    if (n <= 0) {
        if (n == 0)
            errno = ECONNRESET;
        return NULL;
    }
    unsigned int cnt = 0;
    char **v = to_vector(buf, (uint32_t)n, &cnt);
    if (v && cnt < 2) {
        free(v);
        errno = EPROTO;
        return NULL;
    }
    if (v && num)
        *num = cnt;
    return v;
}

XM_EXPORT char **xs_read_watch(struct xs_handle *h, unsigned int *num)
{
    return recv_watch(h, 0, num);
}

XM_EXPORT char **xs_check_watch(struct xs_handle *h)
{
    unsigned int n;
    return recv_watch(h, MSG_DONTWAIT, &n);
}

XM_EXPORT xs_transaction_t xs_transaction_start(struct xs_handle *h)
{
    struct xm_msg r;
    if (call(h, XM_XS_TXN_START, 0, 0, NULL, 0, -1, &r, NULL) < 0)
        return XBT_NULL;
    return r.a[0];
}

XM_EXPORT bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort)
{
    return call(h, XM_XS_TXN_END, t, abort ? 1 : 0, NULL, 0, -1, NULL, NULL) == 0;
}

XM_EXPORT char *xs_get_domain_path(struct xs_handle *h, unsigned int domid)
{
    (void)h;
    char *p = malloc(32);
    if (p)
        snprintf(p, 32, "/local/domain/%u", domid);
    return p;
}

XM_EXPORT bool xs_is_domain_introduced(struct xs_handle *h, unsigned int domid)
{
    struct xm_msg r;
    if (call(h, XM_XS_IS_INTRODUCED, 0, domid, NULL, 0, -1, &r, NULL) < 0)
        return false;
    return r.a[0] != 0;
}

XM_EXPORT bool xs_path_is_subpath(const char *parent, const char *child)
{
    size_t n = strlen(parent);
    if (n && parent[n - 1] == '/')
        n--;
    return strncmp(parent, child, n) == 0 && (child[n] == 0 || child[n] == '/');
}

/* "r0" style strings, as xenstore-chmod passes them: n none, r read, w write, b both. */
XM_EXPORT bool xs_strings_to_perms(struct xs_permissions *perms, unsigned int num, const char *strings)
{
    const char *p = strings;
    for (unsigned int i = 0; i < num; i++) {
        switch (*p) {
        case 'r': perms[i].perms = XS_PERM_READ; break;
        case 'w': perms[i].perms = XS_PERM_WRITE; break;
        case 'b': perms[i].perms = XS_PERM_READ | XS_PERM_WRITE; break;
        case 'n': perms[i].perms = XS_PERM_NONE; break;
        default: errno = EINVAL; return false;
        }
        char *end;
        errno = 0;
        unsigned long id = strtoul(p + 1, &end, 10);
        if (errno || end == p + 1 || *end) {
            errno = EINVAL;
            return false;
        }
        perms[i].id = (unsigned int)id;
        p += strlen(p) + 1;
    }
    return true;
}

XM_EXPORT bool xs_write_all(int fd, const void *data, unsigned int len)
{
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += n;
        len -= (unsigned int)n;
    }
    return true;
}
