/* Watches: firing on changes (to domains that may read the node), special @ paths, and each
 * connection's queue of events not yet sent. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store.h"

struct watch *watches;

bool watch_sockets_stale;

void queue_event(struct conn *c, const char *path, const char *token)
{
    if (c->watchfd < 0)
        return;
    size_t pl = strlen(path) + 1, tl = strlen(token) + 1;
    char buf[ABS_PATH_MAX + 2 + 1024];
    if (pl + tl > sizeof(buf))
        return;
    memcpy(buf, path, pl);
    memcpy(buf + pl, token, tl);
    if (!c->wq_head) {
        ssize_t n = send(c->watchfd, buf, pl + tl, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0)
            return;
        if (errno != EAGAIN)
            return;
    }
    if (c->wq_bytes + pl + tl > WATCH_QUEUE_MAX) {
        logmsg("watch queue of pid %d is full; dropping an event for %s", (int)c->pid, path);
        return;
    }
    struct outmsg *m = malloc(sizeof(*m) + pl + tl);
    if (!m)
        return;
    m->next = NULL;
    m->len = pl + tl;
    memcpy(m->data, buf, pl + tl);
    if (c->wq_tail)
        c->wq_tail->next = m;
    else
        c->wq_head = m;
    watch_sockets_stale = true;
    c->wq_tail = m;
    c->wq_bytes += m->len;
}

void store_flush_watches(struct conn *c)
{
    while (c->wq_head) {
        struct outmsg *m = c->wq_head;
        ssize_t n = send(c->watchfd, m->data, m->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN)
            return;
        c->wq_head = m->next;
        if (!c->wq_head) {
            c->wq_tail = NULL;
            watch_sockets_stale = true;
        }
        c->wq_bytes -= m->len;
        free(m);
    }
}

void fire_one(struct watch *w, const char *path)
{
    const char *report = path;
    char prefix[48];
    if (w->relative) {
        int n = snprintf(prefix, sizeof(prefix), "/local/domain/%u/", w->c->dom);
        if (!strncmp(path, prefix, (size_t)n))
            report = path + n;
    }
    queue_event(w->c, report, w->token);
}

/* Fires the watches at or above PATH; N (or its nearest existing ancestor) decides who may see it. */
void fire(const char *path, const struct node *n)
{
    for (struct watch *w = watches; w; w = w->next) {
        if (is_special(w->path) || !under(w->path, path))
            continue;
        if (n && !(perm_for(n, w->c->dom) & PERM_READ))
            continue;
        fire_one(w, path);
    }
}

/* Removal also fires watches set strictly below the removed node, with their own path. */
void fire_removed(const char *path, const struct node *n)
{
    fire(path, n);
    for (struct watch *w = watches; w; w = w->next) {
        if (is_special(w->path) || !strcmp(w->path, path) || !under(path, w->path))
            continue;
        if (!(perm_for(n, w->c->dom) & PERM_READ))
            continue;
        fire_one(w, w->path);
    }
}

void fire_special(const char *name)
{
    for (struct watch *w = watches; w; w = w->next)
        if (!strcmp(w->path, name))
            queue_event(w->c, name, w->token);
}

/* A new watch fires once at once, as xenstored's do. */
int watch_add(struct conn *c, const char *path, const char *token, bool relative)
{
    for (struct watch *w = watches; w; w = w->next)
        if (w->c == c && !strcmp(w->path, path) && !strcmp(w->token, token))
            return EEXIST;
    if (c->dom != 0 && store_count_watches(c->dom) >= QUOTA_WATCHES)
        return E2BIG;
    struct watch *w = calloc(1, sizeof(*w));
    if (!w || !(w->path = strdup(path)) || !(w->token = strdup(token))) {
        if (w)
            free(w->path);
        free(w);
        return ENOMEM;
    }
    w->c = c;
    w->relative = relative;
    w->next = watches;
    watches = w;
    fire_one(w, path);
    return 0;
}

static void watch_free(struct watch *w)
{
    free(w->path);
    free(w->token);
    free(w);
}

int watch_remove(struct conn *c, const char *path, const char *token)
{
    for (struct watch **pp = &watches; *pp; pp = &(*pp)->next) {
        struct watch *w = *pp;
        if (w->c == c && !strcmp(w->path, path) && !strcmp(w->token, token)) {
            *pp = w->next;
            watch_free(w);
            return 0;
        }
    }
    return ENOENT;
}

/* A connection's watches and its queue of undelivered events go with it. */
void watch_drop_conn(struct conn *c)
{
    for (struct watch **pp = &watches; *pp;) {
        struct watch *w = *pp;
        if (w->c == c) {
            *pp = w->next;
            watch_free(w);
        } else {
            pp = &w->next;
        }
    }
    while (c->wq_head) {
        struct outmsg *m = c->wq_head;
        c->wq_head = m->next;
        free(m);
    }
    c->wq_tail = NULL;
    c->wq_bytes = 0;
}

void watch_drop_all(void)
{
    while (watches) {
        struct watch *w = watches;
        watches = w->next;
        watch_free(w);
    }
}

uint32_t store_count_watches(uint32_t dom)
{
    uint32_t n = 0;
    for (struct watch *w = watches; w; w = w->next)
        if (w->c->dom == dom)
            n++;
    return n;
}
