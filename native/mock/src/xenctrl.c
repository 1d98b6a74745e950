/*
 * libxenctrl for the mock: what Xen's vchan-socket-proxy needs of it (see include/xenctrl.h). The
 * domain table is the mock's: a domain exists while it is introduced (its /local/domain/N home is
 * made when it is introduced, or at its first handle, and removed when it is destroyed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <xenctrl.h>
#include <xenstore.h>
#include <xv_protocol.h>

#include "client.h"

#define XC_EXPORT __attribute__((visibility("default")))

struct xc_interface_core {
    struct xs_handle *xs;
};

XC_EXPORT xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags)
{
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    xc_interface *xch = calloc(1, sizeof(*xch));
    if (!xch)
        return NULL;
    xch->xs = xs_open(0);
    if (!xch->xs) {
        int e = errno;
        free(xch);
        errno = e;
        return NULL;
    }
    return xch;
}

XC_EXPORT int xc_interface_close(xc_interface *xch)
{
    if (!xch)
        return 0;
    xs_close(xch->xs);
    free(xch);
    return 0;
}

static int by_id(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

XC_EXPORT int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info)
{
    if (!xch || (max_doms && !info)) {
        errno = EINVAL;
        return -1;
    }
    unsigned int n = 0;
    char **names = xs_directory(xch->xs, XBT_NULL, "/local/domain", &n);
    if (!names) {
        if (errno != ENOENT)
            return -1;
        n = 0;
    }
    uint32_t *ids = calloc(n ? n : 1, sizeof(*ids));
    if (!ids) {
        free(names);
        errno = ENOMEM;
        return -1;
    }
    unsigned int found = 0;
    for (unsigned int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        unsigned long id = strtoul(names[i], &end, 10);
        if (errno || end == names[i] || *end || id < first_domid || id >= XV_DOMID_FIRST_RESERVED)
            continue;
        if (id != 0 && !xs_is_domain_introduced(xch->xs, (unsigned int)id))
            continue;
        ids[found++] = (uint32_t)id;
    }
    free(names);
    qsort(ids, found, sizeof(*ids), by_id);
    unsigned int out = found < max_doms ? found : max_doms;
    for (unsigned int i = 0; i < out; i++) {
        /* Only the leading fields (the caller's structure is larger): see include/xenctrl.h. */
        memset(&info[i], 0, sizeof(xc_dominfo_t));
        info[i].domid = ids[i];
        info[i].running = 1;
        info[i].xenstore = 1;
    }
    free(ids);
    return (int)out;
}

XC_EXPORT int xc_evtchn_alloc_unbound(xc_interface *xch, uint32_t dom, uint32_t remote_dom)
{
    if (!xch) {
        errno = EINVAL;
        return -1;
    }
    /* A control connection of the caller's domain: the broker checks the privilege with it. */
    int s = xm_open(XM_KIND_CTL, -1);
    if (s < 0)
        return -1;
    struct xm_msg m = {.op = XM_CTL_EVTCHN_ALLOC_UNBOUND, .a = {dom, remote_dom}}, r;
    int rc = xm_call(s, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
    int e = errno;
    close(s);
    errno = e;
    return rc < 0 ? -1 : (int)r.a[0];
}
