/* Operations on a tree (the live one, or a transaction's snapshot), with permissions and quotas;
 * changes to the live tree fire watches. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store.h"

/* Counts N (its subtree too with SUBTREE) in (SIGN 1) or out (-1) of its owners' nodes: the live
 * tree's counts, or in a transaction the delta of the transaction's own domain (the quota's). */
static void count_in(struct ctx *x, const struct node *n, int sign, bool subtree)
{
    if (!x->txn)
        owners_add(n, sign, subtree);
    else
        x->txn->owned_delta +=
            sign * (int64_t)(subtree ? count_owned(n, x->dom) : (n->nperms && n->perms[0].id == x->dom));
}

int lookup_perm(struct ctx *x, const char *path, uint32_t need, struct node **out)
{
    struct node *n = lookup(x->t, path);
    if (!n)
        return ENOENT;
    if (!x->privileged && (perm_for(n, x->dom) & need) != need)
        return EACCES;
    *out = n;
    return 0;
}

/* Finds or creates PATH (creating missing ancestors). *CREATED tells whether anything was made. */
int make_node(struct ctx *x, const char *path, struct node **out, bool *created)
{
    *created = false;
    struct node *n = x->t;
    const char *p = path + 1;
    /* Walk down the existing part. */
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        struct node *k = child(n, p, len);
        if (!k)
            break;
        n = k;
        p += len + (e ? 1 : 0);
    }
    if (!*p) {
        *out = n;
        return 0;
    }
    /* Creating below N needs write access to N. */
    if (!x->privileged && !(perm_for(n, x->dom) & PERM_WRITE))
        return EACCES;
    uint32_t missing = 0;
    for (const char *q = p; *q; q++)
        if (*q == '/')
            missing++;
    missing++;
    if (!x->privileged && x->dom != 0 &&
        (int64_t)owned_nodes(x->dom) + (x->txn ? x->txn->owned_delta : 0) + missing > QUOTA_NODES)
        return ENOSPC;
    uint64_t g = ++gen_counter;
    n->gen = g;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        struct node *k = node_new(p, len, n);
        if (!k || set_perms(k, n->perms, n->nperms) || add_child(n, k)) {
            node_free(k);
            return ENOMEM;
        }
        if (!x->privileged && x->dom != 0 && k->nperms)
            k->perms[0].id = x->dom; /* an unprivileged creator owns what it creates */
        k->gen = g;
        count_in(x, k, 1, false);
        n = k;
        p += len + (e ? 1 : 0);
    }
    *created = true;
    *out = n;
    return 0;
}

int op_write(struct ctx *x, const char *path, const char *val, uint32_t vlen)
{
    if (vlen > PAYLOAD_MAX)
        return E2BIG;
    struct node *n = lookup(x->t, path);
    if (n && !x->privileged && !(perm_for(n, x->dom) & PERM_WRITE))
        return EACCES;
    bool created = false;
    if (!n) {
        int err = make_node(x, path, &n, &created);
        if (err)
            return err;
    }
    char *v = malloc(vlen + 1);
    if (!v)
        return ENOMEM;
    memcpy(v, val, vlen);
    v[vlen] = 0;
    free(n->value);
    n->value = v;
    n->vlen = vlen;
    n->gen = ++gen_counter;
    if (x->live)
        fire(path, n);
    return 0;
}

int op_mkdir(struct ctx *x, const char *path)
{
    struct node *n;
    bool created;
    int err = make_node(x, path, &n, &created);
    if (!err && created && x->live)
        fire(path, n);
    return err;
}

int op_rm(struct ctx *x, const char *path)
{
    if (!strcmp(path, "/"))
        return EINVAL;
    struct node *n = lookup(x->t, path);
    if (!n) {
        /* Removing what is already gone is fine if its parent exists (xenstored). */
        char parent[ABS_PATH_MAX + 64];
        parent_path(path, parent, sizeof(parent));
        return lookup(x->t, parent) ? 0 : ENOENT;
    }
    if (!x->privileged && !(perm_for(n, x->dom) & PERM_WRITE))
        return EACCES;
    if (x->live)
        fire_removed(path, n);
    remove_child(n->parent, n);
    n->parent->gen = ++gen_counter;
    count_in(x, n, -1, true);
    node_free(n);
    return 0;
}

int op_setperms(struct ctx *x, const char *path, const struct perm *p, uint32_t np)
{
    if (np == 0)
        return EINVAL;
    for (uint32_t i = 0; i < np; i++)
        if (p[i].id >= DOMID_FIRST_RESERVED || (p[i].perms & ~(PERM_READ | PERM_WRITE)))
            return EINVAL;
    struct node *n = lookup(x->t, path);
    if (!n)
        return ENOENT;
    if (!x->privileged && x->dom != 0) {
        if (!n->nperms || n->perms[0].id != x->dom)
            return EACCES; /* only the owner may change permissions */
        if (p[0].id != x->dom)
            return EPERM; /* and may not give the node away */
    }
    count_in(x, n, -1, false); /* under its owner before, and after */
    int err = set_perms(n, p, np);
    count_in(x, n, 1, false);
    if (err)
        return err;
    n->gen = ++gen_counter;
    if (x->live)
        fire(path, n);
    return 0;
}
