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
 *  - transactions work on a snapshot and fail with EAGAIN at the end if a
 *    node they touched changed meanwhile;
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

#include "broker.h"

#define PERM_READ 1u
#define PERM_WRITE 2u
#define PAYLOAD_MAX 4096u
#define ABS_PATH_MAX 3072u
#define REL_PATH_MAX 2048u
#define QUOTA_TXNS 10
#define QUOTA_NODES 1000u
#define QUOTA_WATCHES 128u
#define WATCH_QUEUE_MAX (16u << 20)

struct perm {
    uint32_t id, perms;
};

struct node {
    char *name;
    struct node *parent;
    struct node **kids;
    uint32_t nkids, kcap;
    char *value;
    uint32_t vlen;
    struct perm *perms;
    uint32_t nperms;
    uint64_t gen;
};

struct access {
    char *path;
    bool existed;
};

enum logop { LOG_WRITE, LOG_MKDIR, LOG_RM, LOG_SETPERMS };

struct logent {
    enum logop op;
    char *path;
    char *value;
    uint32_t vlen;
    struct perm *perms;
    uint32_t nperms;
};

struct txn {
    uint32_t id;
    struct node *root;
    uint64_t start_gen;
    struct access *acc;
    size_t nacc, acap;
    struct logent *log;
    size_t nlog, lcap;
    struct txn *next;
};

struct watch {
    struct conn *c;
    char *path;  /* absolute, or a special @ path */
    char *token;
    bool relative;
    struct watch *next;
};

static struct node *root;
static uint64_t gen_counter;
static struct watch *watches;
static uint32_t next_txn_id = 1;

/* ---- nodes ---- */

static struct node *node_new(const char *name, size_t nlen, struct node *parent)
{
    struct node *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->name = strndup(name, nlen);
    n->parent = parent;
    n->value = strdup("");
    if (!n->name || !n->value) {
        free(n->name);
        free(n->value);
        free(n);
        return NULL;
    }
    return n;
}

static void node_free(struct node *n)
{
    if (!n)
        return;
    for (uint32_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->name);
    free(n->value);
    free(n->perms);
    free(n);
}

static struct node *node_clone(const struct node *n, struct node *parent)
{
    struct node *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->name = strdup(n->name);
    c->parent = parent;
    c->value = malloc(n->vlen + 1);
    c->perms = malloc((n->nperms ? n->nperms : 1) * sizeof(struct perm));
    c->kids = n->nkids ? malloc(n->nkids * sizeof(*c->kids)) : NULL;
    if (!c->name || !c->value || !c->perms || (n->nkids && !c->kids)) {
        node_free(c);
        return NULL;
    }
    memcpy(c->value, n->value, n->vlen + 1);
    c->vlen = n->vlen;
    memcpy(c->perms, n->perms, n->nperms * sizeof(struct perm));
    c->nperms = n->nperms;
    c->gen = n->gen;
    c->kcap = n->nkids;
    for (uint32_t i = 0; i < n->nkids; i++) {
        c->kids[i] = node_clone(n->kids[i], c);
        if (!c->kids[i]) {
            node_free(c);
            return NULL;
        }
        c->nkids = i + 1;
    }
    return c;
}

static struct node *child(const struct node *n, const char *name, size_t len)
{
    for (uint32_t i = 0; i < n->nkids; i++)
        if (strlen(n->kids[i]->name) == len && !memcmp(n->kids[i]->name, name, len))
            return n->kids[i];
    return NULL;
}

/* Walks an absolute, validated path. */
static struct node *lookup(struct node *t, const char *path)
{
    struct node *n = t;
    const char *p = path + 1;
    while (n && *p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        n = child(n, p, len);
        p += len + (e ? 1 : 0);
    }
    return n;
}

static int add_child(struct node *parent, struct node *kid)
{
    if (parent->nkids == parent->kcap) {
        uint32_t cap = parent->kcap ? parent->kcap * 2 : 4;
        struct node **k = realloc(parent->kids, cap * sizeof(*k));
        if (!k)
            return ENOMEM;
        parent->kids = k;
        parent->kcap = cap;
    }
    parent->kids[parent->nkids++] = kid;
    return 0;
}

static void remove_child(struct node *parent, struct node *kid)
{
    for (uint32_t i = 0; i < parent->nkids; i++) {
        if (parent->kids[i] == kid) {
            memmove(&parent->kids[i], &parent->kids[i + 1], (parent->nkids - i - 1) * sizeof(*parent->kids));
            parent->nkids--;
            return;
        }
    }
}

static int set_perms(struct node *n, const struct perm *p, uint32_t np)
{
    struct perm *copy = malloc((np ? np : 1) * sizeof(*copy));
    if (!copy)
        return ENOMEM;
    memcpy(copy, p, np * sizeof(*copy));
    free(n->perms);
    n->perms = copy;
    n->nperms = np;
    return 0;
}

static uint32_t perm_for(const struct node *n, uint32_t dom)
{
    if (dom == 0 || !n->nperms || n->perms[0].id == dom)
        return PERM_READ | PERM_WRITE;
    for (uint32_t i = 1; i < n->nperms; i++)
        if (n->perms[i].id == dom)
            return n->perms[i].perms;
    return n->perms[0].perms;
}

static uint32_t count_owned(const struct node *n, uint32_t dom)
{
    uint32_t k = (n->nperms && n->perms[0].id == dom) ? 1 : 0;
    for (uint32_t i = 0; i < n->nkids; i++)
        k += count_owned(n->kids[i], dom);
    return k;
}

/* ---- paths ---- */

static bool is_special(const char *p) { return !strcmp(p, "@releaseDomain") || !strcmp(p, "@introduceDomain"); }

/* Validates PATH and makes it absolute into OUT. *REL tells whether it was relative. */
static int canonical(uint32_t dom, const char *path, char *out, size_t cap, bool allow_special, bool *rel)
{
    if (rel)
        *rel = false;
    if (allow_special && is_special(path)) {
        snprintf(out, cap, "%s", path);
        return 0;
    }
    size_t len = strlen(path);
    bool abs = path[0] == '/';
    if (len == 0 || len > (abs ? ABS_PATH_MAX : REL_PATH_MAX))
        return EINVAL;
    for (size_t i = 0; i < len; i++) {
        char ch = path[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                  ch == '_' || ch == '@' || ch == '/';
        if (!ok || (ch == '/' && i + 1 < len && path[i + 1] == '/'))
            return EINVAL;
    }
    if (len > 1 && path[len - 1] == '/')
        return EINVAL;
    int n = abs ? snprintf(out, cap, "%s", path) : snprintf(out, cap, "/local/domain/%u/%s", dom, path);
    if (n < 0 || (size_t)n >= cap || (size_t)n > ABS_PATH_MAX)
        return EINVAL;
    if (rel)
        *rel = !abs;
    return 0;
}

static bool under(const char *parent, const char *p)
{
    size_t n = strlen(parent);
    if (!strcmp(parent, "/"))
        return p[0] == '/';
    return !strncmp(parent, p, n) && (p[n] == 0 || p[n] == '/');
}

/* ---- watches ---- */

static void queue_event(struct conn *c, const char *path, const char *token)
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
    c->wq_tail = m;
    c->wq_bytes += m->len;
    watchfd_want_write(c, true);
}

void store_flush_watches(struct conn *c)
{
    while (c->wq_head) {
        struct outmsg *m = c->wq_head;
        ssize_t n = send(c->watchfd, m->data, m->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN)
            return;
        c->wq_head = m->next;
        if (!c->wq_head)
            c->wq_tail = NULL;
        c->wq_bytes -= m->len;
        free(m);
    }
    watchfd_want_write(c, false);
}

static void fire_one(struct watch *w, const char *path)
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
static void fire(const char *path, const struct node *n)
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
static void fire_removed(const char *path, const struct node *n)
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

static void fire_special(const char *name)
{
    for (struct watch *w = watches; w; w = w->next)
        if (!strcmp(w->path, name))
            queue_event(w->c, name, w->token);
}

/* ---- operations on a tree (the live one, or a transaction's snapshot) ---- */

struct ctx {
    struct node *t;
    uint32_t dom;
    bool live;       /* fire watches */
    bool privileged; /* broker-internal: ignore permissions and quotas */
};

static int lookup_perm(struct ctx *x, const char *path, uint32_t need, struct node **out)
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
static int make_node(struct ctx *x, const char *path, struct node **out, bool *created)
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
    if (!x->privileged && x->dom != 0 && count_owned(x->t, x->dom) + missing > QUOTA_NODES)
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
        n = k;
        p += len + (e ? 1 : 0);
    }
    *created = true;
    *out = n;
    return 0;
}

static int op_write(struct ctx *x, const char *path, const char *val, uint32_t vlen)
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

static int op_mkdir(struct ctx *x, const char *path)
{
    struct node *n;
    bool created;
    int err = make_node(x, path, &n, &created);
    if (!err && created && x->live)
        fire(path, n);
    return err;
}

static int op_rm(struct ctx *x, const char *path)
{
    if (!strcmp(path, "/"))
        return EINVAL;
    struct node *n = lookup(x->t, path);
    if (!n) {
        /* Removing what is already gone is fine if its parent exists (xenstored). */
        char parent[ABS_PATH_MAX + 64];
        snprintf(parent, sizeof(parent), "%s", path);
        char *slash = strrchr(parent, '/');
        if (slash == parent)
            slash[1] = 0;
        else if (slash)
            *slash = 0;
        return lookup(x->t, parent) ? 0 : ENOENT;
    }
    if (!x->privileged && !(perm_for(n, x->dom) & PERM_WRITE))
        return EACCES;
    if (x->live)
        fire_removed(path, n);
    remove_child(n->parent, n);
    n->parent->gen = ++gen_counter;
    node_free(n);
    return 0;
}

static int op_setperms(struct ctx *x, const char *path, const struct perm *p, uint32_t np)
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
    int err = set_perms(n, p, np);
    if (err)
        return err;
    n->gen = ++gen_counter;
    if (x->live)
        fire(path, n);
    return 0;
}

/* ---- transactions ---- */

static struct txn *find_txn(struct conn *c, uint32_t id)
{
    for (struct txn *t = c->txns; t; t = t->next)
        if (t->id == id)
            return t;
    return NULL;
}

static void txn_free(struct txn *t)
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

static void unlink_txn(struct conn *c, struct txn *t)
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
static int txn_touch(struct txn *t, const char *path, bool with_parent)
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
        if (t->nacc == t->acap) {
            size_t cap = t->acap ? t->acap * 2 : 8;
            struct access *a = realloc(t->acc, cap * sizeof(*a));
            if (!a)
                return ENOMEM;
            t->acc = a;
            t->acap = cap;
        }
        t->acc[t->nacc].path = strdup(paths[k]);
        if (!t->acc[t->nacc].path)
            return ENOMEM;
        t->acc[t->nacc].existed = lookup(t->root, paths[k]) != NULL;
        t->nacc++;
    }
    return 0;
}

static int txn_log(struct txn *t, enum logop op, const char *path, const char *val, uint32_t vlen,
                   const struct perm *p, uint32_t np)
{
    if (t->nlog == t->lcap) {
        size_t cap = t->lcap ? t->lcap * 2 : 8;
        struct logent *l = realloc(t->log, cap * sizeof(*l));
        if (!l)
            return ENOMEM;
        t->log = l;
        t->lcap = cap;
    }
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

static int txn_commit(struct conn *c, struct txn *t)
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

/* ---- dispatch ---- */

/* The next NUL-terminated string of the payload (the broker NUL-terminates every payload). */
static char *str_arg(const char *pl, uint32_t len, uint32_t *off)
{
    if (*off >= len)
        return NULL;
    const char *s = pl + *off;
    *off += (uint32_t)strnlen(s, len - *off) + 1;
    return (char *)s;
}

int store_dispatch(struct conn *c, struct xm_msg *m, const char *pl, int in_fd, struct xm_msg *r, char *rbuf)
{
    char path[ABS_PATH_MAX + 64];
    bool rel;
    uint32_t off = 0;
    int err;

    if (m->op == XM_XS_WATCH_CHANNEL) {
        if (in_fd < 0 || c->watchfd >= 0) {
            if (in_fd >= 0)
                close(in_fd);
            return EINVAL;
        }
        c->watchfd = in_fd;
        watchfd_register(c);
        return 0;
    }
    if (in_fd >= 0)
        close(in_fd);

    switch (m->op) {
    case XM_XS_TXN_START: {
        if (c->ntxns >= QUOTA_TXNS)
            return ENOSPC;
        struct txn *t = calloc(1, sizeof(*t));
        if (!t)
            return ENOMEM;
        t->root = node_clone(root, NULL);
        if (!t->root) {
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
        r->a[0] = t->id;
        return 0;
    }
    case XM_XS_TXN_END: {
        struct txn *t = find_txn(c, m->a[0]);
        if (!t)
            return ENOENT;
        unlink_txn(c, t);
        err = m->a[1] ? 0 : txn_commit(c, t);
        txn_free(t);
        return err;
    }
    case XM_XS_IS_INTRODUCED: r->a[0] = domain_exists(m->a[1]) ? 1 : 0; return 0;
    case XM_XS_WATCH:
    case XM_XS_UNWATCH: {
        char *p = str_arg(pl, m->len, &off), *tok = str_arg(pl, m->len, &off);
        if (!p || !tok)
            return EINVAL;
        if ((err = canonical(c->dom, p, path, sizeof(path), true, &rel)))
            return err;
        if (m->op == XM_XS_UNWATCH) {
            for (struct watch **pp = &watches; *pp; pp = &(*pp)->next) {
                struct watch *w = *pp;
                if (w->c == c && !strcmp(w->path, path) && !strcmp(w->token, tok)) {
                    *pp = w->next;
                    free(w->path);
                    free(w->token);
                    free(w);
                    return 0;
                }
            }
            return ENOENT;
        }
        for (struct watch *w = watches; w; w = w->next)
            if (w->c == c && !strcmp(w->path, path) && !strcmp(w->token, tok))
                return EEXIST;
        if (c->dom != 0 && store_count_watches(c->dom) >= QUOTA_WATCHES)
            return E2BIG;
        struct watch *w = calloc(1, sizeof(*w));
        if (!w || !(w->path = strdup(path)) || !(w->token = strdup(tok))) {
            if (w)
                free(w->path);
            free(w);
            return ENOMEM;
        }
        w->c = c;
        w->relative = rel;
        w->next = watches;
        watches = w;
        fire_one(w, path); /* a new watch fires once at once */
        return 0;
    }
    default: break;
    }

    /* Everything else names a node, maybe inside a transaction. */
    char *p = str_arg(pl, m->len, &off);
    if (!p)
        return EINVAL;
    if ((err = canonical(c->dom, p, path, sizeof(path), false, NULL)))
        return err;
    struct txn *t = NULL;
    if (m->a[0]) {
        t = find_txn(c, m->a[0]);
        if (!t)
            return ENOENT;
    }
    struct ctx x = {.t = t ? t->root : root, .dom = c->dom, .live = t == NULL};
    bool changes = m->op == XM_XS_WRITE || m->op == XM_XS_MKDIR || m->op == XM_XS_RM || m->op == XM_XS_SET_PERMS;
    if (t && (err = txn_touch(t, path, changes)))
        return err;

    switch (m->op) {
    case XM_XS_READ: {
        struct node *n;
        if ((err = lookup_perm(&x, path, PERM_READ, &n)))
            return err;
        memcpy(rbuf, n->value, n->vlen);
        r->len = n->vlen;
        return 0;
    }
    case XM_XS_DIRECTORY: {
        struct node *n;
        if ((err = lookup_perm(&x, path, PERM_READ, &n)))
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
    case XM_XS_GET_PERMS: {
        struct node *n;
        if ((err = lookup_perm(&x, path, PERM_READ, &n)))
            return err;
        memcpy(rbuf, n->perms, n->nperms * sizeof(struct perm));
        r->len = n->nperms * (uint32_t)sizeof(struct perm);
        return 0;
    }
    case XM_XS_WRITE: {
        uint32_t vlen = m->a[1];
        if (off + vlen != m->len)
            return EINVAL;
        err = op_write(&x, path, pl + off, vlen);
        if (!err && t)
            err = txn_log(t, LOG_WRITE, path, pl + off, vlen, NULL, 0);
        return err;
    }
    case XM_XS_MKDIR:
        err = op_mkdir(&x, path);
        if (!err && t)
            err = txn_log(t, LOG_MKDIR, path, NULL, 0, NULL, 0);
        return err;
    case XM_XS_RM:
        err = op_rm(&x, path);
        if (!err && t)
            err = txn_log(t, LOG_RM, path, NULL, 0, NULL, 0);
        return err;
    case XM_XS_SET_PERMS: {
        uint32_t np = m->a[1];
        if (np == 0 || off + np * sizeof(struct perm) != m->len)
            return EINVAL;
        struct perm *perms = malloc(np * sizeof(*perms));
        if (!perms)
            return ENOMEM;
        memcpy(perms, pl + off, np * sizeof(*perms));
        err = op_setperms(&x, path, perms, np);
        if (!err && t)
            err = txn_log(t, LOG_SETPERMS, path, NULL, 0, perms, np);
        free(perms);
        return err;
    }
    case XM_XS_RM_ON_CLOSE: {
        char **n = realloc(c->rm_on_close, (c->n_rm + 1) * sizeof(char *));
        if (!n)
            return ENOMEM;
        c->rm_on_close = n;
        if (!(n[c->n_rm] = strdup(path)))
            return ENOMEM;
        c->n_rm++;
        return 0;
    }
    default: return ENOSYS;
    }
}

void store_conn_closed(struct conn *c)
{
    struct ctx x = {.t = root, .dom = 0, .live = true, .privileged = true};
    for (size_t i = 0; i < c->n_rm; i++) {
        op_rm(&x, c->rm_on_close[i]);
        free(c->rm_on_close[i]);
    }
    free(c->rm_on_close);
    c->rm_on_close = NULL;
    c->n_rm = 0;
    for (struct watch **pp = &watches; *pp;) {
        struct watch *w = *pp;
        if (w->c == c) {
            *pp = w->next;
            free(w->path);
            free(w->token);
            free(w);
        } else {
            pp = &w->next;
        }
    }
    while (c->txns) {
        struct txn *t = c->txns;
        c->txns = t->next;
        txn_free(t);
    }
    c->ntxns = 0;
    while (c->wq_head) {
        struct outmsg *m = c->wq_head;
        c->wq_head = m->next;
        free(m);
    }
    c->wq_tail = NULL;
    c->wq_bytes = 0;
}

uint32_t store_count_nodes(uint32_t dom) { return count_owned(root, dom); }

static void mark_owners(const struct node *n, uint8_t *bits)
{
    if (n->nperms && n->perms[0].id < DOMID_FIRST_RESERVED)
        bits[n->perms[0].id / 8] |= (uint8_t)(1u << (n->perms[0].id % 8));
    for (uint32_t i = 0; i < n->nkids; i++)
        mark_owners(n->kids[i], bits);
}

void store_owners(uint8_t *bits) { mark_owners(root, bits); }

uint32_t store_count_watches(uint32_t dom)
{
    uint32_t n = 0;
    for (struct watch *w = watches; w; w = w->next)
        if (w->c->dom == dom)
            n++;
    return n;
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
    struct ctx x = {.t = root, .dom = 0, .live = false, .privileged = true};
    op_mkdir(&x, "/local/domain");
    op_mkdir(&x, "/tool");
    store_domain_introduced(0);
}

void store_reset(void)
{
    while (watches) {
        struct watch *w = watches;
        watches = w->next;
        free(w->path);
        free(w->token);
        free(w);
    }
    node_free(root);
    store_init();
}
