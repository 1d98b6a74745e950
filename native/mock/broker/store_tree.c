/* The xenstore tree: nodes, their permissions, and paths as xenstored reads them. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store.h"

struct node *root;
uint64_t gen_counter;

struct node *node_new(const char *name, size_t nlen, struct node *parent)
{
    struct node *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->name = strndup(name, nlen);
    n->nlen = (uint32_t)nlen;
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

void node_free(struct node *n)
{
    if (!n)
        return;
    for (uint32_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->index);
    free(n->name);
    free(n->value);
    free(n->perms);
    free(n);
}

/* A copy of N without its children, for a transaction's tree: LAZY until they are all copied in. */
struct node *node_copy(const struct node *n, struct node *parent)
{
    struct node *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->name = strdup(n->name);
    c->nlen = n->nlen;
    c->parent = parent;
    c->value = malloc(n->vlen + 1);
    c->perms = malloc((n->nperms ? n->nperms : 1) * sizeof(struct perm));
    if (!c->name || !c->value || !c->perms) {
        node_free(c);
        return NULL;
    }
    memcpy(c->value, n->value, n->vlen + 1);
    c->vlen = n->vlen;
    memcpy(c->perms, n->perms, n->nperms * sizeof(struct perm));
    c->nperms = n->nperms;
    c->gen = c->live_gen = n->gen;
    c->from_live = true;
    c->lazy = n->nkids > 0;
    return c;
}

#define INDEX_MIN 32u /* children below which a walk beats a hash */

static uint32_t name_hash(const char *name, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)name[i]) * 16777619u;
    return h;
}

static void index_put(struct node *n, uint32_t at)
{
    const struct node *k = n->kids[at];
    uint32_t i = name_hash(k->name, k->nlen) & (n->icap - 1);
    while (n->index[i])
        i = (i + 1) & (n->icap - 1);
    n->index[i] = at + 1;
}

/* Builds N's index of its children afresh (or drops it when they are few). Without memory for
 * it, N has none: child() then walks, slower and still right. */
void index_kids(struct node *n)
{
    free(n->index);
    n->index = NULL;
    n->icap = 0;
    if (n->nkids < INDEX_MIN)
        return;
    uint32_t cap = INDEX_MIN * 2;
    while (cap < n->nkids * 2)
        cap *= 2;
    n->index = calloc(cap, sizeof(*n->index));
    if (!n->index)
        return;
    n->icap = cap;
    for (uint32_t i = 0; i < n->nkids; i++)
        index_put(n, i);
}

struct node *child(const struct node *n, const char *name, size_t len)
{
    if (n->index) {
        for (uint32_t i = name_hash(name, len) & (n->icap - 1); n->index[i]; i = (i + 1) & (n->icap - 1)) {
            struct node *k = n->kids[n->index[i] - 1];
            if (k->nlen == len && !memcmp(k->name, name, len))
                return k;
        }
        return NULL;
    }
    for (uint32_t i = 0; i < n->nkids; i++)
        if (n->kids[i]->nlen == len && !memcmp(n->kids[i]->name, name, len))
            return n->kids[i];
    return NULL;
}

/* Walks an absolute, validated path. */
struct node *lookup(struct node *t, const char *path)
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

int add_child(struct node *parent, struct node *kid)
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
    if (parent->index && parent->nkids * 2 <= parent->icap)
        index_put(parent, parent->nkids - 1);
    else if (parent->nkids >= INDEX_MIN)
        index_kids(parent);
    return 0;
}

void remove_child(struct node *parent, struct node *kid)
{
    for (uint32_t i = 0; i < parent->nkids; i++) {
        if (parent->kids[i] == kid) {
            memmove(&parent->kids[i], &parent->kids[i + 1], (parent->nkids - i - 1) * sizeof(*parent->kids));
            parent->nkids--;
            if (parent->index)
                index_kids(parent); /* the children after I moved */
            return;
        }
    }
}

int set_perms(struct node *n, const struct perm *p, uint32_t np)
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

uint32_t perm_for(const struct node *n, uint32_t dom)
{
    if (dom == 0 || !n->nperms || n->perms[0].id == dom)
        return PERM_READ | PERM_WRITE;
    for (uint32_t i = 1; i < n->nperms; i++)
        if (n->perms[i].id == dom)
            return n->perms[i].perms;
    return n->perms[0].perms;
}

uint32_t count_owned(const struct node *n, uint32_t dom)
{
    uint32_t k = (n->nperms && n->perms[0].id == dom) ? 1 : 0;
    for (uint32_t i = 0; i < n->nkids; i++)
        k += count_owned(n->kids[i], dom);
    return k;
}

/* The live tree's nodes by owner, kept as they are made, removed and given away: the quota is
 * checked on every node a domain makes, and counting the whole store each time made setting up N
 * channels cost N^2. */
static uint32_t owned_count[DOMID_FIRST_RESERVED];

void owners_add(const struct node *n, int sign, bool subtree)
{
    if (n->nperms && n->perms[0].id < DOMID_FIRST_RESERVED)
        owned_count[n->perms[0].id] += (uint32_t)sign;
    for (uint32_t i = 0; subtree && i < n->nkids; i++)
        owners_add(n->kids[i], sign, true);
}

uint32_t owned_nodes(uint32_t dom)
{
    return dom < DOMID_FIRST_RESERVED ? owned_count[dom] : 0;
}

/* ---- paths ---- */

bool is_special(const char *p)
{
    return !strcmp(p, "@releaseDomain") || !strcmp(p, "@introduceDomain");
}

/* Validates PATH and makes it absolute into OUT. *REL tells whether it was relative. */
int canonical(uint32_t dom, const char *path, char *out, size_t cap, bool allow_special, bool *rel)
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

/* PATH's parent into OUT (CAP >= strlen(PATH) + 1; OUT may be PATH): "/" for "/" and for "/a". */
void parent_path(const char *path, char *out, size_t cap)
{
    if (out != path)
        snprintf(out, cap, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash == out)
        slash[1] = 0;
    else if (slash)
        *slash = 0;
}

bool under(const char *parent, const char *p)
{
    size_t n = strlen(parent);
    if (!strcmp(parent, "/"))
        return p[0] == '/';
    return !strncmp(parent, p, n) && (p[n] == 0 || p[n] == '/');
}
