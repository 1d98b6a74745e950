/* The store's own header: xenstore's tree, watches, operations and transactions (store_*.c), shared
 * by those files only. Rooms, bottom up: store_tree.c (nodes, permissions, paths) <- store_watch.c
 * (watches and their queues) <- store_ops.c (operations on a tree, firing watches) <- store_txn.c
 * (transactions: snapshots, the access log, commit by replay) <- store.c (requests, domain hooks). */
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
    struct node *root; /* the tree as this transaction sees it, its own changes included */
    struct node *base; /* the tree as it stood at the start: what a node's existence is judged by */
    uint64_t start_gen;
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
struct node *node_clone(const struct node *n, struct node *parent);
struct node *child(const struct node *n, const char *name, size_t len);
struct node *lookup(struct node *t, const char *path);
int add_child(struct node *parent, struct node *kid);
void remove_child(struct node *parent, struct node *kid);
int set_perms(struct node *n, const struct perm *p, uint32_t np);
uint32_t perm_for(const struct node *n, uint32_t dom);
uint32_t count_owned(const struct node *n, uint32_t dom);
bool is_special(const char *p);
int canonical(uint32_t dom, const char *path, char *out, size_t cap, bool allow_special, bool *rel);
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
struct txn *find_txn(struct conn *c, uint32_t id);
void txn_free(struct txn *t);
void unlink_txn(struct conn *c, struct txn *t);
int txn_touch(struct txn *t, const char *path, bool with_parent);
int txn_touch_subtree(struct txn *t, const char *path);
int txn_log(struct txn *t, enum logop op, const char *path, const char *val, uint32_t vlen, const struct perm *p,
            uint32_t np);
int txn_commit(struct conn *c, struct txn *t);
int txn_start(struct conn *c, uint32_t *id);
int txn_end(struct conn *c, uint32_t id, bool abort);
void txn_drop_conn(struct conn *c);

#endif
