/* The store's own header: xenstore's tree, watches, operations and transactions (store_*.c), shared
 * by those files only. Rooms, bottom up: store_tree.c (nodes, permissions, paths) <- store_watch.c
 * (watches and their queues) <- store_ops.c (operations on a tree, firing watches) <- store_txn.c
 * (transactions: trees copied from the live one as they are read, the access log, commit by
 * replay) <- store.c (requests, domain hooks). */
#ifndef XENMOCKD_STORE_H
#define XENMOCKD_STORE_H

#include "broker.h"

#define PERM_READ 1u
#define PERM_WRITE 2u
#define PAYLOAD_MAX 4096u
#define ABS_PATH_MAX ((uint32_t)XV_XENSTORE_ABS_PATH_MAX)
#define REL_PATH_MAX ((uint32_t)XV_XENSTORE_REL_PATH_MAX)
#define QUOTA_TXNS 10
#define QUOTA_NODES 1000u
#define QUOTA_WATCHES 128u
#define WATCH_QUEUE_MAX (16u << 20)

struct perm {
    uint32_t id, perms;
};

struct node {
    char *name;
    uint32_t nlen;
    struct node *parent;
    struct node **kids;
    uint32_t nkids, kcap;
    /* Where a child is in KIDS by its name's hash (index + 1, 0 for none), when there are enough
     * of them to be worth it (a directory of 10,000 channels): ICAP slots, a power of two. */
    uint32_t *index, icap;
    char *value;
    uint32_t vlen;
    struct perm *perms;
    uint32_t nperms;
    uint64_t gen;
    /* In a transaction's tree only: FROM_LIVE, copied from the live tree (not made by the
     * transaction), when the live node's GEN was LIVE_GEN; LAZY, holds only the children copied so
     * far, the rest are the live node's. */
    bool from_live, lazy;
    uint64_t live_gen;
};

struct access {
    char *path;
    bool existed; /* for the transaction, before its own changes */
    uint64_t gen; /* the live node's generation when the transaction copied it */
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
    /* The tree as this transaction sees it, its own changes included: the live tree's nodes are
     * copied in as the transaction first reaches them (txn_load), so a transaction costs what it
     * touches, not the size of the store. */
    struct node *root;
    int64_t owned_delta; /* nodes its domain owns, made less removed (for the quota) */
    struct access *acc;
    size_t nacc, acap;
    struct logent *log;
    size_t nlog, lcap;
    struct txn *next;
};

struct watch {
    struct conn *c;
    char *path; /* absolute, or a special @ path */
    char *token;
    bool relative;
    struct watch *next;
};

struct ctx {
    struct node *t;
    struct txn *txn; /* T's transaction, or NULL when T is the live tree */
    uint32_t dom;
    bool live;       /* fire watches */
    bool privileged; /* broker-internal: ignore permissions and quotas */
};

extern struct node *root;     /* the live tree */
extern uint64_t gen_counter;  /* bumped by every change, for transaction conflicts */
extern struct watch *watches; /* every watch of every connection */

/* store_tree.c */
struct node *node_new(const char *name, size_t nlen, struct node *parent);
void node_free(struct node *n);
struct node *node_copy(const struct node *n, struct node *parent);
struct node *child(const struct node *n, const char *name, size_t len);
void index_kids(struct node *n);
struct node *lookup(struct node *t, const char *path);
int add_child(struct node *parent, struct node *kid);
void remove_child(struct node *parent, struct node *kid);
int set_perms(struct node *n, const struct perm *p, uint32_t np);
uint32_t perm_for(const struct node *n, uint32_t dom);
uint32_t count_owned(const struct node *n, uint32_t dom);
/* Counts N (and its subtree when SUBTREE) in (SIGN 1) or out (-1) of the live tree's owners. */
void owners_add(const struct node *n, int sign, bool subtree);
uint32_t owned_nodes(uint32_t dom); /* nodes of the live tree DOM owns */
bool is_special(const char *p);
int canonical(uint32_t dom, const char *path, char *out, size_t cap, bool allow_special, bool *rel);
void parent_path(const char *path, char *out, size_t cap);
bool under(const char *parent, const char *p);

/* store_watch.c */
void queue_event(struct conn *c, const char *path, const char *token);
void fire_one(struct watch *w, const char *path);
void fire(const char *path, const struct node *n);
void fire_removed(const char *path, const struct node *n);
void fire_special(const char *name);
int watch_add(struct conn *c, const char *path, const char *token, bool relative);
int watch_remove(struct conn *c, const char *path, const char *token);
void watch_drop_conn(struct conn *c);
void watch_drop_all(void);

/* store_ops.c */
int lookup_perm(struct ctx *x, const char *path, uint32_t need, struct node **out);
int make_node(struct ctx *x, const char *path, struct node **out, bool *created);
int op_write(struct ctx *x, const char *path, const char *val, uint32_t vlen);
int op_mkdir(struct ctx *x, const char *path);
int op_rm(struct ctx *x, const char *path);
int op_setperms(struct ctx *x, const char *path, const struct perm *p, uint32_t np);

/* store_txn.c */
enum load { LOAD_PATH, LOAD_KIDS, LOAD_SUBTREE, LOAD_RM };
int txn_load(struct txn *t, const char *path, enum load what);
struct txn *find_txn(struct conn *c, uint32_t id);
void txn_free(struct txn *t);
void unlink_txn(struct conn *c, struct txn *t);
enum touch { TOUCH_READ, TOUCH_CHANGE, TOUCH_RM };
int txn_touch(struct txn *t, const char *path, enum touch how);
int txn_touch_subtree(struct txn *t, const char *path);
int txn_log(struct txn *t, enum logop op, const char *path, const char *val, uint32_t vlen, const struct perm *p,
            uint32_t np);
int txn_commit(struct conn *c, struct txn *t);
int txn_start(struct conn *c, uint32_t *id);
int txn_end(struct conn *c, uint32_t id, bool abort);
void txn_drop_conn(struct conn *c);

#endif
