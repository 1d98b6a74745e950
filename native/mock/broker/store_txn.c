/* Transactions: a tree of their own, the paths read and written (conflicts fail with EAGAIN at the
 * end, as xenstored's do), and a log replayed on the live tree at commit.
 *
 * A transaction's tree starts as a copy of the live root alone; a request copies in the live nodes
 * it reaches (txn_load) before it runs, so starting one costs nothing and a request costs the
 * nodes on its path, however big the store (each vchan offer is a transaction: copying the whole
 * tree made setting up N channels cost N^2). As in xenstored since Xen 4.9, a transaction sees a
 * node as it was when first reached, and every node a request touched is judged at the end: it
 * must exist exactly when it did for the transaction, and be the generation it copied, or the end
 * is EAGAIN. So what a transaction saw is what the live tree holds when it commits. */
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

/* Makes K, a copy of the live node LIVE, a child of N. */
static int adopt(struct node *n, const struct node *live, struct node **k)
{
    *k = node_copy(live, n);
    if (!*k || add_child(n, *k)) {
        node_free(*k);
        *k = NULL;
        return ENOMEM;
    }
    return 0;
}

/* Gives N (a node of a transaction's tree) all its children, in LIVE's order (LIVE: the live node
 * at N's path, or NULL); with DEEP, all its descendants. Children the transaction made itself
 * follow the live node's. On ENOMEM, N is as it was. */
static int load_kids(struct node *n, const struct node *live, bool deep)
{
    if (n->lazy && live) {
        uint32_t total = live->nkids + n->nkids, nf = 0;
        struct node **fresh = calloc(live->nkids ? live->nkids : 1, sizeof(*fresh));
        struct node **kids = calloc(total ? total : 1, sizeof(*kids));
        bool *kept = calloc(n->nkids ? n->nkids : 1, sizeof(*kept));
        int err = fresh && kids && kept ? 0 : ENOMEM;
        for (uint32_t i = 0; i < live->nkids && !err; i++) {
            const struct node *lk = live->kids[i];
            if (!child(n, lk->name, lk->nlen) && !(fresh[nf++] = node_copy(lk, n)))
                err = ENOMEM;
        }
        if (!err) {
            uint32_t nk = 0, f = 0;
            for (uint32_t i = 0; i < live->nkids; i++) {
                struct node *k = NULL;
                for (uint32_t j = 0; j < n->nkids && !k; j++)
                    if (!kept[j] && !strcmp(n->kids[j]->name, live->kids[i]->name)) {
                        kept[j] = true;
                        k = n->kids[j];
                    }
                kids[nk++] = k ? k : fresh[f++];
            }
            for (uint32_t j = 0; j < n->nkids; j++)
                if (!kept[j])
                    kids[nk++] = n->kids[j];
            free(n->kids);
            n->kids = kids;
            n->nkids = nk;
            n->kcap = total ? total : 1;
            kids = NULL;
            index_kids(n);
        } else {
            for (uint32_t i = 0; i < nf; i++)
                node_free(fresh[i]);
        }
        free(fresh);
        free(kids);
        free(kept);
        if (err)
            return err;
    }
    n->lazy = false;
    for (uint32_t i = 0; deep && i < n->nkids; i++) {
        struct node *k = n->kids[i];
        int err = load_kids(k, live ? child(live, k->name, k->nlen) : NULL, true);
        if (err)
            return err;
    }
    return 0;
}

/* Copies into T's tree what a request on PATH reads of the live tree: the nodes on the path, and
 * PATH's children (LOAD_KIDS), or for a removal PATH's parent's children and PATH's whole subtree
 * (LOAD_RM: a node removed from a parent that may still copy children in would come back). Below
 * a node the transaction made, or one whose children it has all, the live tree is not looked at. */
int txn_load(struct txn *t, const char *path, enum load what)
{
    if (what == LOAD_RM) {
        char parent[ABS_PATH_MAX + 64];
        parent_path(path, parent, sizeof(parent));
        int err = txn_load(t, parent, LOAD_KIDS);
        return err ? err : txn_load(t, path, LOAD_SUBTREE);
    }
    struct node *n = t->root;
    const struct node *live = root;
    const char *p = path + 1;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        struct node *lk = live ? child(live, p, len) : NULL;
        struct node *k = child(n, p, len);
        if (!k) {
            if (!n->lazy || !lk)
                return 0;
            int err = adopt(n, lk, &k);
            if (err)
                return err;
        }
        n = k;
        live = lk;
        p += len + (e ? 1 : 0);
    }
    return what == LOAD_PATH ? 0 : load_kids(n, live, what == LOAD_SUBTREE);
}

/* Records that T looked at ONE path, as it stood for T before T's own changes (txn_load has
 * copied in what the live tree has there): a node the transaction made did not exist for it, and
 * must still not at commit. */
static int touch_one(struct txn *t, const char *path)
{
    for (size_t i = 0; i < t->nacc; i++)
        if (!strcmp(t->acc[i].path, path))
            return 0;
    if (grow((void **)&t->acc, &t->acap, t->nacc, sizeof(*t->acc)) < 0)
        return ENOMEM;
    t->acc[t->nacc].path = strdup(path);
    if (!t->acc[t->nacc].path)
        return ENOMEM;
    const struct node *n = lookup(t->root, path);
    t->acc[t->nacc].existed = n && n->from_live;
    t->acc[t->nacc].gen = n && n->from_live ? n->live_gen : 0;
    t->nacc++;
    return 0;
}

/* Records that T looked at PATH, and for a change the node whose children it changes, as xenstored
 * counts them: a node made, its nearest ancestor that exists for T; a node removed (or found gone),
 * its parent. A change to a node that is there (its value, its permissions) touches it alone, so
 * siblings coming and going beside it do not fail the transaction. */
int txn_touch(struct txn *t, const char *path, enum touch how)
{
    int err = touch_one(t, path);
    if (err || how == TOUCH_READ || !strcmp(path, "/"))
        return err;
    char up[ABS_PATH_MAX + 64];
    parent_path(path, up, sizeof(up));
    if (how == TOUCH_CHANGE) {
        if (lookup(t->root, path))
            return 0;
        while (strcmp(up, "/") && !lookup(t->root, up))
            parent_path(up, up, sizeof(up));
    }
    return touch_one(t, up);
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
        int err = touch_one(t, kid);
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
        if (t->acc[i].existed != (g != NULL) || (g && g->gen != t->acc[i].gen))
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
    t->root = node_copy(root, NULL);
    if (!t->root) {
        free(t);
        return ENOMEM;
    }
    t->id = next_txn_id++;
    if (next_txn_id == 0)
        next_txn_id = 1;
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
