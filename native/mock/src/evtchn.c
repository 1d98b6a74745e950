/*
 * libxenevtchn.so.1 for the mock hypervisor.
 *
 * A handle is a broker connection plus a pipe: the broker writes each
 * delivered port into the pipe as a u32, exactly what a read of
 * /dev/xen/evtchn returns, so xenevtchn_fd() is pollable and
 * xenevtchn_pending() is a plain read. A delivered port stays masked in the
 * broker until xenevtchn_unmask().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "../../include/xenevtchn.h"

struct xenevtchn_handle {
    int sock;
    int rfd;
    pthread_mutex_t lock;
    uint32_t *ports; /* ports bound through this handle, for Linux's ENOTCONN checks */
    size_t nports, cap;
};

XM_EXPORT xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
    (void)logger;
    int p[2];
    if (pipe2(p, (flags & XENEVTCHN_NO_CLOEXEC) ? 0 : O_CLOEXEC) < 0)
        return NULL;
    /* The broker must never block on a client that does not read its events. */
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    int s = xm_open(XM_KIND_EVTCHN, p[1]);
    int e = errno;
    close(p[1]);
    if (s < 0) {
        close(p[0]);
        errno = e;
        return NULL;
    }
    xenevtchn_handle *h = calloc(1, sizeof(*h));
    if (!h) {
        close(s);
        close(p[0]);
        errno = ENOMEM;
        return NULL;
    }
    h->sock = s;
    h->rfd = p[0];
    pthread_mutex_init(&h->lock, NULL);
    return h;
}

XM_EXPORT int xenevtchn_close(xenevtchn_handle *h)
{
    if (!h)
        return 0;
    close(h->sock);
    close(h->rfd);
    pthread_mutex_destroy(&h->lock);
    free(h->ports);
    free(h);
    return 0;
}

XM_EXPORT int xenevtchn_fd(xenevtchn_handle *h)
{
    return h->rfd;
}

static ssize_t find_port(xenevtchn_handle *h, uint32_t port)
{
    for (size_t i = 0; i < h->nports; i++)
        if (h->ports[i] == port)
            return (ssize_t)i;
    return -1;
}

static int add_port(xenevtchn_handle *h, uint32_t port)
{
    if (h->nports == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        uint32_t *n = realloc(h->ports, cap * sizeof(*n));
        if (!n)
            return -1;
        h->ports = n;
        h->cap = cap;
    }
    h->ports[h->nports++] = port;
    return 0;
}

static xenevtchn_port_or_error_t bind_call(xenevtchn_handle *h, uint32_t op, uint32_t a0, uint32_t a1)
{
    struct xm_msg m = {.op = op, .a = {a0, a1}}, r;
    pthread_mutex_lock(&h->lock);
    int rc = xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
    if (rc == 0 && add_port(h, r.a[0]) < 0) {
        /* Out of memory for our bookkeeping: give the port back rather than lose track of it. */
        struct xm_msg u = {.op = XM_EVTCHN_UNBIND, .a = {r.a[0]}}, ur;
        xm_call(h->sock, &u, NULL, 0, -1, &ur, NULL, 0, NULL, NULL);
        errno = ENOMEM;
        rc = -1;
    }
    int e = errno;
    pthread_mutex_unlock(&h->lock);
    errno = e;
    return rc < 0 ? -1 : (xenevtchn_port_or_error_t)r.a[0];
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *h, uint32_t domid)
{
    return bind_call(h, XM_EVTCHN_BIND_UNBOUND, domid, 0);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid,
                                                               evtchn_port_t remote_port)
{
    return bind_call(h, XM_EVTCHN_BIND_INTERDOMAIN, domid, remote_port);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
    return bind_call(h, XM_EVTCHN_BIND_VIRQ, virq, 0);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_static(xenevtchn_handle *h, evtchn_port_t port)
{
    return bind_call(h, XM_EVTCHN_BIND_STATIC, port, 0);
}

XM_EXPORT int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
    pthread_mutex_lock(&h->lock);
    ssize_t i = find_port(h, port);
    int rc = -1, e = ENOTCONN;
    if (i >= 0) {
        struct xm_msg m = {.op = XM_EVTCHN_UNBIND, .a = {port}}, r;
        rc = xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
        e = errno;
        if (rc == 0)
            h->ports[i] = h->ports[--h->nports];
    }
    pthread_mutex_unlock(&h->lock);
    errno = e;
    return rc;
}

XM_EXPORT int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
    pthread_mutex_lock(&h->lock);
    int bound = find_port(h, port) >= 0;
    pthread_mutex_unlock(&h->lock);
    if (!bound) {
        errno = ENOTCONN; /* what Linux's IOCTL_EVTCHN_NOTIFY says for a port this fd did not bind */
        return -1;
    }
    return xm_post(h->sock, XM_EVTCHN_NOTIFY, port);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
    uint32_t port;
    ssize_t n;
    while ((n = read(h->rfd, &port, sizeof(port))) < 0 && errno == EINTR)
        ;
    if (n != (ssize_t)sizeof(port)) {
        if (n >= 0)
            errno = EIO;
        return -1;
    }
    return (xenevtchn_port_or_error_t)port;
}

XM_EXPORT int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
    /* Like a write to /dev/xen/evtchn: ports this handle did not bind are ignored. */
    return xm_post(h->sock, XM_EVTCHN_UNMASK, port);
}

XM_EXPORT int xenevtchn_restrict(xenevtchn_handle *h, domid_t domid)
{
    struct xm_msg m = {.op = XM_EVTCHN_RESTRICT, .a = {domid}}, r;
    pthread_mutex_lock(&h->lock);
    int rc = xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
    int e = errno;
    pthread_mutex_unlock(&h->lock);
    errno = e;
    return rc;
}
