/*
 * A hostile vchan peer, built by hand from the grant, event channel and xenstore interfaces (no
 * libxenvchan: it says what no libxenvchan would). It plays a server or a client, corrupts one field
 * of the shared page (or of the server's xenstore entry) before the other side connects or after,
 * and then stays, notifying now and then, until it is killed.
 *
 *   hostile_peer server PEER_DOMID PATH FIELD before|after
 *   hostile_peer client SERVER_DOMID PATH FIELD before|after
 *
 * FIELD: left.cons left.prod right.cons right.prod left_order right_order cli_live srv_live
 *        cli_notify srv_notify grant0, and for a server also ring-ref event-channel (the entry).
 * It prints "ready" once its side of the channel is up, "corrupted" once the field is written.
 * As a server: in-page rings (left order 10 at 1024, right order 11 at 2048), a well-formed entry.
 * As a client: it claims an offered channel (cli_live 2 -> 1) as a client of this library does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xen/io/libxenvchan.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>

static void die(const char *what)
{
    fprintf(stderr, "hostile_peer: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void say(const char *what)
{
    printf("%s\n", what);
    fflush(stdout);
}

/* Writes the corrupt value of FIELD into the page; an unknown FIELD ends the program (exit 2). */
static void corrupt(volatile struct vchan_interface *v, const char *field)
{
    if (!strcmp(field, "left.cons"))
        v->left.cons = 0xdead0000u;
    else if (!strcmp(field, "left.prod"))
        v->left.prod = 0xdead0000u;
    else if (!strcmp(field, "right.cons"))
        v->right.cons = 0xdead0000u;
    else if (!strcmp(field, "right.prod"))
        v->right.prod = 0xdead0000u;
    else if (!strcmp(field, "left_order"))
        v->left_order = 99;
    else if (!strcmp(field, "right_order"))
        v->right_order = 3;
    else if (!strcmp(field, "cli_live"))
        v->cli_live = 7;
    else if (!strcmp(field, "srv_live"))
        v->srv_live = 7;
    else if (!strcmp(field, "cli_notify"))
        v->cli_notify = 0xff;
    else if (!strcmp(field, "srv_notify"))
        v->srv_notify = 0xff;
    else if (!strcmp(field, "grant0"))
        v->grants[0] = 0xffffffffu;
    else {
        fprintf(stderr, "hostile_peer: unknown field %s\n", field);
        exit(2);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Stays until killed, notifying every 50 ms (a hostile peer also sends events at will). */
static void linger(xenevtchn_handle *ev, evtchn_port_t port)
{
    for (;;) {
        xenevtchn_notify(ev, port);
        usleep(50000);
        int p;
        while ((p = xenevtchn_pending(ev)) >= 0)
            xenevtchn_unmask(ev, (evtchn_port_t)p);
    }
}

static int server(unsigned peer, const char *path, const char *field, int after)
{
    xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
    xengntshr_handle *gs = xengntshr_open(NULL, 0);
    struct xs_handle *xs = xs_open(0);
    if (!ev || !gs || !xs)
        die("open");
    int port = xenevtchn_bind_unbound_port(ev, peer);
    if (port < 0)
        die("bind_unbound_port");
    uint32_t ref;
    volatile struct vchan_interface *v =
        xengntshr_share_page_notify(gs, peer, &ref, 1, offsetof(struct vchan_interface, srv_live), (evtchn_port_t)port);
    if (!v)
        die("share_page_notify");
    v->left_order = 10;
    v->right_order = 11;
    v->cli_live = 2;
    v->srv_live = 1;
    v->cli_notify = VCHAN_NOTIFY_WRITE;
    int entry_field = !strcmp(field, "ring-ref") || !strcmp(field, "event-channel");
    if (!after && !entry_field)
        corrupt(v, field);
    char key[512], val[32];
    snprintf(key, sizeof(key), "%s/ring-ref", path);
    snprintf(val, sizeof(val), "%s", !strcmp(field, "ring-ref") ? "12x" : "");
    if (!val[0])
        snprintf(val, sizeof(val), "%u", ref);
    if (!xs_write(xs, XBT_NULL, key, val, (unsigned)strlen(val)))
        die("xs_write ring-ref");
    snprintf(key, sizeof(key), "%s/event-channel", path);
    snprintf(val, sizeof(val), "%s", !strcmp(field, "event-channel") ? "-3" : "");
    if (!val[0])
        snprintf(val, sizeof(val), "%d", port);
    if (!xs_write(xs, XBT_NULL, key, val, (unsigned)strlen(val)))
        die("xs_write event-channel");
    say("ready");
    if (!after || entry_field) {
        say("corrupted");
        linger(ev, (evtchn_port_t)port);
    }
    /* After: wait for the client, give it a moment on a sound channel, then corrupt. */
    while (__atomic_load_n(&v->cli_live, __ATOMIC_ACQUIRE) != 1)
        usleep(1000);
    usleep(100000);
    corrupt(v, field);
    say("corrupted");
    linger(ev, (evtchn_port_t)port);
    return 0;
}

static char *read_key(struct xs_handle *xs, const char *path, const char *key)
{
    char k[512];
    snprintf(k, sizeof(k), "%s/%s", path, key);
    unsigned len;
    return xs_read(xs, XBT_NULL, k, &len);
}

static int client(unsigned server_dom, const char *path, const char *field, int after)
{
    struct xs_handle *xs = xs_open(0);
    xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
    xengnttab_handle *gt = xengnttab_open(NULL, 0);
    if (!xs || !ev || !gt)
        die("open");
    char *rr = NULL, *ec = NULL;
    for (int i = 0; i < 500 && !(rr && ec); i++) {
        free(rr);
        free(ec);
        rr = read_key(xs, path, "ring-ref");
        ec = read_key(xs, path, "event-channel");
        if (!(rr && ec))
            usleep(10000);
    }
    if (!rr || !ec)
        die("no entry");
    uint32_t ref = (uint32_t)strtoul(rr, NULL, 10);
    uint32_t remote = (uint32_t)strtoul(ec, NULL, 10);
    int port = xenevtchn_bind_interdomain(ev, server_dom, remote);
    if (port < 0)
        die("bind_interdomain");
    volatile struct vchan_interface *v = xengnttab_map_grant_ref_notify(
        gt, server_dom, ref, PROT_READ | PROT_WRITE, offsetof(struct vchan_interface, cli_live), (evtchn_port_t)port);
    if (!v)
        die("map");
    if (!after)
        corrupt(v, field);
    uint8_t two = 2;
    if (strcmp(field, "cli_live") || after)
        __atomic_compare_exchange_n(&v->cli_live, &two, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    v->srv_notify = VCHAN_NOTIFY_WRITE;
    xenevtchn_notify(ev, (evtchn_port_t)port);
    say("ready");
    if (after) {
        usleep(100000);
        corrupt(v, field);
    }
    say("corrupted");
    linger(ev, (evtchn_port_t)port);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6 || (strcmp(argv[1], "server") && strcmp(argv[1], "client")) ||
        (strcmp(argv[5], "before") && strcmp(argv[5], "after"))) {
        fprintf(stderr, "usage: %s server|client DOMID PATH FIELD before|after\n", argv[0]);
        return 2;
    }
    unsigned dom = (unsigned)strtoul(argv[2], NULL, 10);
    int after = !strcmp(argv[5], "after");
    return !strcmp(argv[1], "server") ? server(dom, argv[3], argv[4], after) : client(dom, argv[3], argv[4], after);
}
