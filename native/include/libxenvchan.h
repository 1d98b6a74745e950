/*
 * libxenvchan.h for the mock build: the libxenvchan API and its public
 * control structure, laid out exactly as Xen 4.17's so that programs built
 * against either header work with either library.
 */
#ifndef XENMOCK_LIBXENVCHAN_H
#define XENMOCK_LIBXENVCHAN_H

#include <stddef.h>
#include <stdint.h>
#include <xen/io/libxenvchan.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#ifdef __cplusplus
extern "C" {
#endif

struct xentoollog_logger;

struct libxenvchan_ring {
    struct ring_shared *shr; /* indices in the shared page */
    void *buffer;            /* ring data */
    int order;               /* our own copy: the shared one cannot be trusted */
};

struct libxenvchan {
    union {
        xengntshr_handle *gntshr; /* server */
        xengnttab_handle *gnttab; /* client */
    };
    struct vchan_interface *ring;
    xenevtchn_handle *event;
    uint32_t event_port;
    int is_server : 1;
    int server_persist : 1;
    int blocking : 1;
    struct libxenvchan_ring read, write;
    char *xs_path;
};

struct libxenvchan *libxenvchan_server_init(struct xentoollog_logger *logger, int domain, const char *xs_path,
                                            size_t read_min, size_t write_min);
struct libxenvchan *libxenvchan_client_init(struct xentoollog_logger *logger, int domain, const char *xs_path);
void libxenvchan_close(struct libxenvchan *ctrl);
int libxenvchan_recv(struct libxenvchan *ctrl, void *data, size_t size);
int libxenvchan_read(struct libxenvchan *ctrl, void *data, size_t size);
int libxenvchan_send(struct libxenvchan *ctrl, const void *data, size_t size);
int libxenvchan_write(struct libxenvchan *ctrl, const void *data, size_t size);
int libxenvchan_wait(struct libxenvchan *ctrl);
int libxenvchan_fd_for_select(struct libxenvchan *ctrl);
int libxenvchan_is_open(struct libxenvchan *ctrl);
int libxenvchan_data_ready(struct libxenvchan *ctrl);
int libxenvchan_buffer_space(struct libxenvchan *ctrl);

#ifdef __cplusplus
}
#endif
#endif
