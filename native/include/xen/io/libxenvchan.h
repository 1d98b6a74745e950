/*
 * The vchan shared page, as laid out by Xen's libxenvchan wire format
 * (little endian). See ../shared/XEN-FACTS.md in the project for the meaning
 * of each field.
 */
#ifndef XENMOCK_IO_LIBXENVCHAN_H
#define XENMOCK_IO_LIBXENVCHAN_H

#include <stdint.h>

struct ring_shared {
    uint32_t cons, prod;
};

#define VCHAN_NOTIFY_WRITE 0x1
#define VCHAN_NOTIFY_READ 0x2

struct vchan_interface {
    struct ring_shared left, right; /* left: client -> server; right: server -> client */
    uint16_t left_order, right_order;
    uint8_t cli_live, srv_live;     /* 0 gone, 1 connected, 2 client not yet connected */
    uint8_t cli_notify, srv_notify; /* bits the peer asks the owner of the byte to honour */
    uint32_t grants[];
};

#endif
