/*
 * xenstore.h for the mock hypervisor: the libxenstore.so.4 client API
 * (VERS_4.0). Declarations follow Xen's documented, stable ABI.
 */
#ifndef XENSTORE_H
#define XENSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XBT_NULL 0
#define XS_OPEN_READONLY (1UL << 0)
#define XS_OPEN_SOCKETONLY (1UL << 1)
#define XS_UNWATCH_FILTER (1UL << 2)

#define XS_PERM_NONE 0x00
#define XS_PERM_READ 0x01
#define XS_PERM_WRITE 0x02

enum xs_watch_type { XS_WATCH_PATH = 0, XS_WATCH_TOKEN };

struct xs_permissions {
    unsigned int id;
    unsigned int perms;
};

struct xs_handle;
typedef uint32_t xs_transaction_t;

struct xs_handle *xs_open(unsigned long flags);
void xs_close(struct xs_handle *xsh);
struct xs_handle *xs_daemon_open(void);
struct xs_handle *xs_domain_open(void);
struct xs_handle *xs_daemon_open_readonly(void);
void xs_daemon_close(struct xs_handle *);
void xs_daemon_destroy_postfork(struct xs_handle *);

char **xs_directory(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *num);
void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len);
bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data, unsigned int len);
bool xs_mkdir(struct xs_handle *h, xs_transaction_t t, const char *path);
bool xs_rm(struct xs_handle *h, xs_transaction_t t, const char *path);
struct xs_permissions *xs_get_permissions(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *num);
bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t, const char *path, struct xs_permissions *perms,
                        unsigned int num_perms);
bool xs_watch(struct xs_handle *h, const char *path, const char *token);
int xs_fileno(struct xs_handle *h);
char **xs_check_watch(struct xs_handle *h);
char **xs_read_watch(struct xs_handle *h, unsigned int *num);
bool xs_unwatch(struct xs_handle *h, const char *path, const char *token);
xs_transaction_t xs_transaction_start(struct xs_handle *h);
bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort);
char *xs_get_domain_path(struct xs_handle *h, unsigned int domid);
bool xs_path_is_subpath(const char *parent, const char *child);
bool xs_is_domain_introduced(struct xs_handle *h, unsigned int domid);
bool xs_strings_to_perms(struct xs_permissions *perms, unsigned int num, const char *strings);
bool xs_write_all(int fd, const void *data, unsigned int len);

#ifdef __cplusplus
}
#endif
#endif
