/* Connections: every client handle is one SOCK_SEQPACKET connection (plus, for xenstore, a socket
 * for watch events). Accepting, replying, and closing, where what the handle held is released by
 * its room (event channels, grants, the store), unmap notifications first, as Linux's drivers do
 * when a process dies. Calls down into the rooms and the domain registry; nothing calls back. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"

struct conn *conns;
int nconns;
int epfd = -1;
bool conns_changed;

void conn_ep_add(int fd, uint64_t tag, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* Watch sockets follow their queues: registered once the store has one for a connection, polled for
 * writing while events wait in its queue. Run after each batch of requests, so the store never calls
 * back into the transport. */
void conn_sync_watch_sockets(void)
{
    if (!watch_sockets_stale)
        return;
    watch_sockets_stale = false;
    for (struct conn *c = conns; c; c = c->next) {
        if (c->watchfd < 0)
            continue;
        bool want = c->wq_head != NULL;
        if (!c->watch_polled) {
            struct epoll_event ev = {.events = want ? EPOLLOUT : 0, .data.u64 = (uint64_t)(uintptr_t)c | TAG_WATCH};
            epoll_ctl(epfd, EPOLL_CTL_ADD, c->watchfd, &ev);
            c->watch_polled = true;
            c->watch_writing = want;
        } else if (want != c->watch_writing) {
            struct epoll_event ev = {.events = want ? EPOLLOUT : 0, .data.u64 = (uint64_t)(uintptr_t)c | TAG_WATCH};
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->watchfd, &ev);
            c->watch_writing = want;
        }
    }
}

void conn_close(struct conn *c)
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
        if (c->watch_polled)
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

void conn_accept(int lfd)
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
        conn_ep_add(fd, (uint64_t)(uintptr_t)c, EPOLLIN);
    }
}

int conn_send_reply(struct conn *c, struct xm_msg *r, const void *payload, int *fds, int nfds)
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
