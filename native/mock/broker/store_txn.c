/* Transactions: a snapshot of the tree, the paths read and written (conflicts fail with EAGAIN at
 * the end, as xenstored's do), and a log replayed on the live tree at commit. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store.h"

/* Makes room in *ARRAY (of *CAP elements of SIZE bytes) for element N, doubling it when full. */
static int grow(void **array, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *a = realloc(*array, ncap * size);
    if (!a)
        return -1;
    *array = a;
    *cap = ncap;
    return 0;
}

struct txn *find_txn(struct conn *c, uint32_t id)
{
    for (struct txn *t = c->txns; t; t = t->next)
        if (t->id == id)
            return t;
    return NULL;
}

void txn_free(struct txn *t)
{
    node_free(t->root);
    node_free(t->base);
    for (size_t i = 0; i < t->nacc; i++)
        free(t->acc[i].path);
    free(t->acc);
    for (size_t i = 0; i < t->nlog; i++) {
        free(t->log[i].path);
        free(t->log[i].value);
        free(t->log[i].perms);
    }
    free(t->log);
    free(t);
}

void unlink_txn(struct conn *c, struct txn *t)
{
    for (struct txn **pp = &c->txns; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            c->ntxns--;
            return;
        }
    }
}

/* Records that T looked at PATH (and, for changes, its parent), as it stood in T's snapshot. */
int txn_touch(struct txn *t, const char *path, bool with_parent)
{
    char parent[ABS_PATH_MAX + 64];
    const char *paths[2] = {path, NULL};
    if (with_parent && strcmp(path, "/")) {
        snprintf(parent, sizeof(parent), "%s", path);
        char *slash = strrchr(parent, '/');
        if (slash == parent)
            slash[1] = 0;
        else
            *slash = 0;
        paths[1] = parent;
    }
    for (int k = 0; k < 2 && paths[k]; k++) {
        bool seen = false;
        for (size_t i = 0; i < t->nacc && !seen; i++)
            seen = !strcmp(t->acc[i].path, paths[k]);
        if (seen)
            continue;
        if (grow((void **)&t->acc, &t->acap, t->nacc, sizeof(*t->acc)) < 0)
            return ENOMEM;
        t->acc[t->nacc].path = strdup(paths[k]);
        if (!t->acc[t->nacc].path)
            return ENOMEM;
        /* As the snapshot had it, not as this transaction's own writes left it: a parent the
         * transaction created implicitly did not exist, and must still not at commit. */
        t->acc[t->nacc].existed = lookup(t->base, paths[k]) != NULL;
        t->nacc++;
    }
    return 0;
}

/* Records every node under PATH (not PATH itself) as T's snapshot has it: a removal inside a
 * transaction depends on them all, and a node written again later in the same transaction must be
 * judged by whether it existed before the removal, not after it. */
int txn_touch_subtree(struct txn *t, const char *path)
{
    struct node *n = lookup(t->root, path);
    if (!n)
        return 0;
    for (uint32_t i = 0; i < n->nkids; i++) {
        char kid[ABS_PATH_MAX + 64];
        int len = snprintf(kid, sizeof(kid), "%s/%s", strcmp(path, "/") ? path : "", n->kids[i]->name);
        if (len < 0 || (size_t)len >= sizeof(kid))
            continue;
        int err = txn_touch(t, kid, false);
        if (!err)
            err = txn_touch_subtree(t, kid);
        if (err)
            return err;
    }
    return 0;
}

int txn_log(struct txn *t, enum logop op, const char *path, const char *val, uint32_t vlen, const struct perm *p,
            uint32_t np)
{
    if (grow((void **)&t->log, &t->lcap, t->nlog, sizeof(*t->log)) < 0)
        return ENOMEM;
    struct logent *e = &t->log[t->nlog];
    memset(e, 0, sizeof(*e));
    e->op = op;
    e->path = strdup(path);
    if (val) {
        e->value = malloc(vlen + 1);
        if (e->value)
            memcpy(e->value, val, vlen);
        e->vlen = vlen;
    }
    if (p) {
        e->perms = malloc(np * sizeof(*p));
        if (e->perms)
            memcpy(e->perms, p, np * sizeof(*p));
        e->nperms = np;
    }
    if (!e->path || (val && !e->value) || (p && !e->perms)) {
        free(e->path);
        free(e->value);
        free(e->perms);
        return ENOMEM;
    }
    t->nlog++;
    return 0;
}

int txn_commit(struct conn *c, struct txn *t)
{
    for (size_t i = 0; i < t->nacc; i++) {
        struct node *g = lookup(root, t->acc[i].path);
        if (t->acc[i].existed != (g != NULL) || (g && g->gen > t->start_gen))
            return EAGAIN;
    }
    struct ctx x = {.t = root, .dom = c->dom, .live = true};
    for (size_t i = 0; i < t->nlog; i++) {
        struct logent *e = &t->log[i];
        int err = 0;
        switch (e->op) {
        case LOG_WRITE: err = op_write(&x, e->path, e->value, e->vlen); break;
        case LOG_MKDIR: err = op_mkdir(&x, e->path); break;
        case LOG_RM: err = op_rm(&x, e->path); break;
        case LOG_SETPERMS: err = op_setperms(&x, e->path, e->perms, e->nperms); break;
        }
        if (err) /* cannot happen: the nodes it touched are as the snapshot had them */
            logmsg("transaction %u: replay of %s failed: %s", t->id, e->path, strerror(err));
    }
    return 0;
}

static uint32_t next_txn_id = 1;

int txn_start(struct conn *c, uint32_t *id)
{
    if (c->ntxns >= QUOTA_TXNS)
        return ENOSPC;
    struct txn *t = calloc(1, sizeof(*t));
    if (!t)
        return ENOMEM;
    t->root = node_clone(root, NULL);
    t->base = t->root ? node_clone(root, NULL) : NULL;
    if (!t->root || !t->base) {
        node_free(t->root);
        free(t);
        return ENOMEM;
    }
    t->id = next_txn_id++;
    if (next_txn_id == 0)
        next_txn_id = 1;
    t->start_gen = gen_counter;
    t->next = c->txns;
    c->txns = t;
    c->ntxns++;
    *id = t->id;
    return 0;
}

int txn_end(struct conn *c, uint32_t id, bool abort)
{
    struct txn *t = find_txn(c, id);
    if (!t)
        return ENOENT;
    unlink_txn(c, t);
    int err = abort ? 0 : txn_commit(c, t);
    txn_free(t);
    return err;
}

void txn_drop_conn(struct conn *c)
{
    while (c->txns) {
        struct txn *t = c->txns;
        c->txns = t->next;
        txn_free(t);
    }
    c->ntxns = 0;
}
