/*
 * xengnttab.h for the mock hypervisor: the libxengnttab.so.1 API (grant
 * mapping through xengnttab_*, grant sharing through xengntshr_*).
 * Declarations follow Xen's documented, stable ABI; no Xen header is needed.
 */
#ifndef XENGNTTAB_H
#define XENGNTTAB_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef XENMOCK_HAVE_XEN_TYPES
#define XENMOCK_HAVE_XEN_TYPES
typedef uint32_t evtchn_port_t;
typedef uint16_t domid_t;
#endif

struct xentoollog_logger;
typedef struct xengntdev_handle xengnttab_handle;
typedef struct xengntdev_handle xengntshr_handle;

#ifndef GNTST_okay
#define GNTST_okay 0
#define GNTST_general_error (-1)
#define GNTST_bad_domain (-2)
#define GNTST_bad_gntref (-3)
#define GNTST_bad_handle (-4)
#define GNTST_bad_virt_addr (-5)
#define GNTST_permission_denied (-8)
#define GNTST_bad_copy_arg (-10)
#endif
#ifndef GNTCOPY_source_gref
#define GNTCOPY_source_gref (1 << 0)
#define GNTCOPY_dest_gref (1 << 1)
#endif

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags);
int xengnttab_close(xengnttab_handle *xgt);
int xengnttab_fd(xengnttab_handle *xgt);
void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot);
void *xengnttab_map_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t *domids, uint32_t *refs, int prot);
void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid, uint32_t *refs, int prot);
void *xengnttab_map_grant_ref_notify(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot,
                                     uint32_t notify_offset, evtchn_port_t notify_port);
int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count);
int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants);

struct xengnttab_grant_copy_segment {
    union xengnttab_copy_ptr {
        void *virt;
        struct {
            uint32_t ref;
            uint16_t offset;
            uint16_t domid;
        } foreign;
    } source, dest;
    uint16_t len;
    uint16_t flags;
    int16_t status;
};
typedef struct xengnttab_grant_copy_segment xengnttab_grant_copy_segment_t;
int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count, xengnttab_grant_copy_segment_t *segs);

xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags);
int xengntshr_close(xengntshr_handle *xgs);
int xengntshr_fd(xengntshr_handle *xgs);
void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs, int writable);
void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref, int writable,
                                  uint32_t notify_offset, evtchn_port_t notify_port);
int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count);

#ifdef __cplusplus
}
#endif
#endif
