/*
 * The xenstore tree, with xenstored's rules:
 *  - permissions: the first entry names the owner and the default for every
 *    other domain; later entries grant READ/WRITE to one domain; the owner
 *    and dom0 may do anything; only the owner (or dom0) may change them, and
 *    an unprivileged owner may not give a node away;
 *  - new nodes inherit their parent's permissions; an unprivileged creator
 *    becomes the owner;
 *  - relative paths are relative to /local/domain/<domid>;
 *  - watches fire once when set, then on any change at or below their path,
 *    only to domains allowed to read the node; @introduceDomain and
 *    @releaseDomain fire as domains come and go;
 *  - a transaction sees a node as it was when it first reached it, with its
 *    own changes, and fails with EAGAIN at the end if a node it touched has
 *    changed since (xenstored's rule since Xen 4.9);
 *  - quotas: 10 open transactions per connection (ENOSPC), 1000 nodes per
 *    unprivileged domain (ENOSPC), 128 watches per domain (E2BIG), values of
 *    at most 4096 bytes (E2BIG).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store.h"

/* The next NUL-terminated string of the payload (the broker NUL-terminates every payload). */
static char *str_arg(const char *pl, uint32_t len, uint32_t *off)
{
    if (*off >= len)
        return NULL;
    const char *s = pl + *off;
    *off += (uint32_t)strnlen(s, len - *off) + 1;
    return (char *)s;
}

static int watch_request(struct conn *c, struct xm_msg *m, const char *pl)
{
    char path[ABS_PATH_MAX + 64];
    bool rel;
    uint32_t off = 0;
    char *p = str_arg(pl, m->len, &off), *tok = str_arg(pl, m->len, &off);
    if (!p || !tok)
        return EINVAL;
    int err = canonical(c->dom, p, path, sizeof(path), true, &rel);
    if (err)
        return err;
    return m->op == XM_XS_UNWATCH ? watch_remove(c, path, tok) : watch_add(c, path, tok, rel);
}

static int read_node(struct ctx *x, const char *path, struct xm_msg *r, char *rbuf)
{
    struct node *n;
    int err = lookup_perm(x, path, PERM_READ, &n);
    if (err)
        return err;
    memcpy(rbuf, n->value, n->vlen);
    r->len = n->vlen;
    return 0;
}

static int list_children(struct ctx *x, const char *path, struct xm_msg *r, char *rbuf)
{
    struct node *n;
    int err = lookup_perm(x, path, PERM_READ, &n);
    if (err)
        return err;
    uint32_t pos = 0;
    for (uint32_t i = 0; i < n->nkids; i++) {
        size_t l = strlen(n->kids[i]->name) + 1;
        if (pos + l > XM_MAX_PAYLOAD)
            return E2BIG;
        memcpy(rbuf + pos, n->kids[i]->name, l);
        pos += (uint32_t)l;
    }
    r->len = pos;
    return 0;
}

static int get_perms(struct ctx *x, const char *path, struct xm_msg *r, char *rbuf)
{
    struct node *n;
    int err = lookup_perm(x, path, PERM_READ, &n);
    if (err)
        return err;
    memcpy(rbuf, n->perms, n->nperms * sizeof(struct perm));
    r->len = n->nperms * (uint32_t)sizeof(struct perm);
    return 0;
}

/* A change: made on the tree of X, and logged for replay when inside transaction T. */
static int change(struct ctx *x, struct txn *t, struct xm_msg *m, const char *path, const char *pl, uint32_t off)
{
    int err;
    switch (m->op) {
    case XM_XS_WRITE: {
        uint32_t vlen = m->a[1];
        if (off + vlen != m->len)
            return EINVAL;
        err = op_write(x, path, pl + off, vlen);
        return !err && t ? txn_log(t, LOG_WRITE, path, pl + off, vlen, NULL, 0) : err;
    }
    case XM_XS_MKDIR: err = op_mkdir(x, path); return !err && t ? txn_log(t, LOG_MKDIR, path, NULL, 0, NULL, 0) : err;
    case XM_XS_RM: err = op_rm(x, path); return !err && t ? txn_log(t, LOG_RM, path, NULL, 0, NULL, 0) : err;
    case XM_XS_SET_PERMS: {
        uint32_t np = m->a[1];
        if (np == 0 || off + np * sizeof(struct perm) != m->len)
            return EINVAL;
        struct perm *perms = malloc(np * sizeof(*perms));
        if (!perms)
            return ENOMEM;
        memcpy(perms, pl + off, np * sizeof(*perms));
        err = op_setperms(x, path, perms, np);
        if (!err && t)
            err = txn_log(t, LOG_SETPERMS, path, NULL, 0, perms, np);
        free(perms);
        return err;
    }
    default: return ENOSYS;
    }
}

/* A request that names a node, maybe inside a transaction (a[0]). */
static int node_request(struct conn *c, struct xm_msg *m, const char *pl, struct xm_msg *r, char *rbuf)
{
    char path[ABS_PATH_MAX + 64];
    uint32_t off = 0;
    char *p = str_arg(pl, m->len, &off);
    if (!p)
        return EINVAL;
    int err = canonical(c->dom, p, path, sizeof(path), false, NULL);
    if (err)
        return err;
    struct txn *t = NULL;
    if (m->a[0] && !(t = find_txn(c, m->a[0])))
        return ENOENT;
    struct ctx x = {.t = t ? t->root : root, .txn = t, .dom = c->dom, .live = t == NULL};
    enum load what = m->op == XM_XS_DIRECTORY ? LOAD_KIDS : m->op == XM_XS_RM ? LOAD_RM : LOAD_PATH;
    if (t && (err = txn_load(t, path, what)))
        return err;
    bool changes = m->op == XM_XS_WRITE || m->op == XM_XS_MKDIR || m->op == XM_XS_SET_PERMS;
    enum touch how = m->op == XM_XS_RM ? TOUCH_RM : changes ? TOUCH_CHANGE : TOUCH_READ;
    if (t && (err = txn_touch(t, path, how)))
        return err;
    if (t && m->op == XM_XS_RM && (err = txn_touch_subtree(t, path)))
        return err;
    switch (m->op) {
    case XM_XS_READ: return read_node(&x, path, r, rbuf);
    case XM_XS_DIRECTORY: return list_children(&x, path, r, rbuf);
    case XM_XS_GET_PERMS: return get_perms(&x, path, r, rbuf);
    default: return change(&x, t, m, path, pl, off);
    }
}

int store_dispatch(struct conn *c, struct xm_msg *m, const char *pl, int in_fd, struct xm_msg *r, char *rbuf)
{
    if (m->op == XM_XS_WATCH_CHANNEL) {
        if (in_fd < 0 || c->watchfd >= 0) {
            if (in_fd >= 0)
                close(in_fd);
            return EINVAL;
        }
        c->watchfd = in_fd; /* polled by conn.c from now on */
        watch_sockets_stale = true;
        return 0;
    }
    if (in_fd >= 0)
        close(in_fd);
    switch (m->op) {
    case XM_XS_TXN_START: return txn_start(c, &r->a[0]);
    case XM_XS_TXN_END: return txn_end(c, m->a[0], m->a[1] != 0);
    case XM_XS_IS_INTRODUCED: r->a[0] = domain_exists(m->a[1]) ? 1 : 0; return 0;
    case XM_XS_WATCH:
    case XM_XS_UNWATCH: return watch_request(c, m, pl);
    default: return node_request(c, m, pl, r, rbuf);
    }
}

void store_conn_closed(struct conn *c)
{
    watch_drop_conn(c);
    txn_drop_conn(c);
}

uint32_t store_count_nodes(uint32_t dom)
{
    return owned_nodes(dom);
}

void store_owners(uint8_t *bits)
{
    for (uint32_t id = 0; id < DOMID_FIRST_RESERVED; id++)
        if (owned_nodes(id))
            bits[id / 8] |= (uint8_t)(1u << (id % 8));
}

/* What a toolstack writes for a new domain: /local/domain/N readable by N, and N's own data/ directory. */
void store_domain_introduced(uint32_t dom)
{
    char path[64];
    struct ctx x = {.t = root, .dom = 0, .live = true, .privileged = true};
    snprintf(path, sizeof(path), "/local/domain/%u", dom);
    if (!lookup(root, path)) {
        struct perm ro[2] = {{0, 0}, {dom, PERM_READ}};
        struct perm own[1] = {{dom, 0}};
        char val[16];
        op_mkdir(&x, path);
        if (dom != 0)
            op_setperms(&x, path, ro, 2);
        snprintf(val, sizeof(val), "%u", dom);
        snprintf(path, sizeof(path), "/local/domain/%u/domid", dom);
        op_write(&x, path, val, (uint32_t)strlen(val));
        snprintf(path, sizeof(path), "/local/domain/%u/name", dom);
        char name[32];
        snprintf(name, sizeof(name), dom ? "mock-%u" : "Domain-0", dom);
        op_write(&x, path, name, (uint32_t)strlen(name));
        snprintf(path, sizeof(path), "/local/domain/%u/data", dom);
        op_mkdir(&x, path);
        op_setperms(&x, path, own, 1);
    }
    fire_special("@introduceDomain");
}

void store_domain_released(uint32_t dom)
{
    (void)dom;
    fire_special("@releaseDomain");
}

bool store_domain_known(uint32_t dom)
{
    char path[64];
    snprintf(path, sizeof(path), "/local/domain/%u", dom);
    return lookup(root, path) != NULL;
}

void store_domain_destroyed(uint32_t dom)
{
    char path[64];
    struct ctx x = {.t = root, .dom = 0, .live = true, .privileged = true};
    snprintf(path, sizeof(path), "/local/domain/%u", dom);
    if (lookup(root, path))
        op_rm(&x, path);
    fire_special("@releaseDomain");
}

void store_init(void)
{
    root = node_new("", 0, NULL);
    struct perm p = {0, 0};
    set_perms(root, &p, 1);
    owners_add(root, 1, false);
    struct ctx x = {.t = root, .dom = 0, .live = false, .privileged = true};
    op_mkdir(&x, "/local/domain");
    op_mkdir(&x, "/tool");
    store_domain_introduced(0);
}

void store_reset(void)
{
    watch_drop_all();
    owners_add(root, -1, true);
    node_free(root);
    store_init();
}
