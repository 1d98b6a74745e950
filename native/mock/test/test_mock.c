/*
 * Semantics of the mock hypervisor: event channels, grants, xenstore,
 * permission refusals for a third domain, and vchan against a hostile peer.
 * One process plays several domains by switching the domain its thread opens
 * handles as (xenmock_set_thread_domid).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libxenvchan.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenmock.h>
#include <xenstore.h>

#include <xv_protocol.h>
#include <xv_vchan.h>
#include "harness.h"
#include "../include/xenmock_proto.h"

static void as(int dom)
{
    xenmock_set_thread_domid(dom);
}

/* The next port delivered on H within MS milliseconds, or -1. */
static int next_event(xenevtchn_handle *h, int ms)
{
    struct pollfd p = {.fd = xenevtchn_fd(h), .events = POLLIN};
    if (poll(&p, 1, ms) != 1)
        return -1;
    return xenevtchn_pending(h);
}

/* The running broker's pid (its socket's peer), or -1. */
static pid_t broker_pid(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/xenmockd.sock", xenmock_dir());
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct ucred cred = {.pid = -1};
    socklen_t len = sizeof(cred);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        cred.pid = -1;
    if (s >= 0)
        close(s);
    return cred.pid;
}

/* xenstored's default node quota per unprivileged domain (the mock's too). */
#define QUOTA 1000u

/* Whether PATH's children (in transaction T) are WANT, names separated by one space, in order. */
static bool dir_is(struct xs_handle *h, xs_transaction_t t, const char *path, const char *want)
{
    unsigned n = 0;
    char **names = xs_directory(h, t, path, &n);
    if (!names)
        return false;
    char got[1024] = "";
    size_t pos = 0;
    for (unsigned i = 0; i < n && pos < sizeof(got); i++)
        pos += (size_t)snprintf(got + pos, sizeof(got) - pos, "%s%s", i ? " " : "", names[i]);
    free(names);
    if (strcmp(got, want))
        fprintf(stderr, "    %s: [%s], wanted [%s]\n", path, got, want);
    return !strcmp(got, want);
}

/* Whether PATH reads WANT (in transaction T). */
static bool read_is(struct xs_handle *h, xs_transaction_t t, const char *path, const char *want)
{
    unsigned len;
    char *v = xs_read(h, t, path, &len);
    bool ok = v && len == strlen(want) && !memcmp(v, want, len);
    free(v);
    return ok;
}

static struct xenmock_stats stats_of(uint32_t dom)
{
    struct xenmock_stats s = {0};
    xenmock_stats(dom, &s, 1);
    return s;
}

static void test_evtchn(void)
{
    TEST("event channels: unbound ports, binding rules, coalescing, masking")
    {
        as(0);
        xenevtchn_handle *a = xenevtchn_open(NULL, 0);
        as(5);
        xenevtchn_handle *b = xenevtchn_open(NULL, 0);
        as(7);
        xenevtchn_handle *c = xenevtchn_open(NULL, 0);
        CHECK(a && b && c);

        int pa = xenevtchn_bind_unbound_port(a, 5);
        CHECK(pa > 0);
        CHECK_ERR(xenevtchn_bind_interdomain(c, 0, (uint32_t)pa), EINVAL); /* offered to 5, not 7 */
        CHECK_ERR(xenevtchn_bind_interdomain(b, 0, 4000), EINVAL);         /* no such port */
        CHECK_ERR(xenevtchn_bind_interdomain(b, 999, 1), ESRCH);           /* no such domain */
        int pb = xenevtchn_bind_interdomain(b, 0, (uint32_t)pa);
        CHECK(pb > 0);
        CHECK_ERR(xenevtchn_bind_interdomain(b, 0, (uint32_t)pa), EINVAL); /* already connected */

        /* Xen marks a freshly bound interdomain port pending. */
        CHECK(next_event(b, 1000) == pb);
        CHECK(xenevtchn_unmask(b, (uint32_t)pb) == 0);

        /* Three notifies before the receiver looks: one event. */
        for (int i = 0; i < 3; i++)
            CHECK(xenevtchn_notify(a, (uint32_t)pa) == 0);
        CHECK(next_event(b, 1000) == pb);
        CHECK(next_event(b, 100) == -1);
        /* Delivered ports stay masked: a notify now is held back until unmask. */
        CHECK(xenevtchn_notify(a, (uint32_t)pa) == 0);
        CHECK(next_event(b, 100) == -1);
        CHECK(xenevtchn_unmask(b, (uint32_t)pb) == 0);
        CHECK(next_event(b, 1000) == pb);
        xenevtchn_unmask(b, (uint32_t)pb);
        /* And the other direction. */
        CHECK(xenevtchn_notify(b, (uint32_t)pb) == 0);
        CHECK(next_event(a, 1000) == pa);
        xenevtchn_unmask(a, (uint32_t)pa);

        /* Ports are per handle, as with /dev/xen/evtchn. */
        CHECK_ERR(xenevtchn_notify(c, (uint32_t)pa), ENOTCONN);
        CHECK_ERR(xenevtchn_unbind(c, (uint32_t)pa), ENOTCONN);

        /* Closing one end leaves the other unbound; sends to it are dropped without error. */
        CHECK(xenevtchn_unbind(a, (uint32_t)pa) == 0);
        CHECK(xenevtchn_notify(b, (uint32_t)pb) == 0);
        CHECK(stats_of(0).ports == 0);
        CHECK(stats_of(5).ports == 1);
        CHECK(xenevtchn_unbind(b, (uint32_t)pb) == 0);

        /* Loopback within a domain. */
        int l1 = xenevtchn_bind_unbound_port(a, XV_DOMID_SELF);
        int l2 = xenevtchn_bind_interdomain(a, 0, (uint32_t)l1);
        CHECK(l1 > 0 && l2 > 0);
        CHECK(next_event(a, 1000) == l2);
        xenevtchn_unmask(a, (uint32_t)l2);
        CHECK(xenevtchn_notify(a, (uint32_t)l2) == 0);
        CHECK(next_event(a, 1000) == l1);
        xenevtchn_unmask(a, (uint32_t)l1);

        xenevtchn_close(a);
        xenevtchn_close(b);
        xenevtchn_close(c);
        CHECK(stats_of(0).ports == 0 && stats_of(5).ports == 0);
    }

    TEST("event channels: restrict, virq, static channels")
    {
        as(0);
        xenevtchn_handle *a = xenevtchn_open(NULL, 0);
        xenevtchn_handle *r = xenevtchn_open(NULL, 0);
        CHECK_ERR(xenevtchn_restrict(r, 0), EINVAL);
        CHECK(xenevtchn_restrict(r, 5) == 0);
        CHECK_ERR(xenevtchn_restrict(r, 6), EACCES);
        CHECK_ERR(xenevtchn_bind_unbound_port(r, 5), EACCES);
        CHECK_ERR(xenevtchn_bind_virq(r, 3), EACCES);
        CHECK_ERR(xenevtchn_bind_interdomain(r, 6, 1), EACCES);

        int v = xenevtchn_bind_virq(a, 3);
        CHECK(v > 0);
        CHECK_ERR(xenevtchn_bind_virq(a, 3), EEXIST);
        CHECK_ERR(xenevtchn_bind_virq(a, 99), EINVAL);
        CHECK(xenmock_raise_virq(0, 3) == 0);
        CHECK(next_event(a, 1000) == v);
        xenevtchn_unmask(a, (uint32_t)v);
        CHECK(xenevtchn_unbind(a, (uint32_t)v) == 0);

        CHECK(xenmock_static_evtchn_add(0, 60, 5, 61) == 0);
        CHECK_ERR(xenmock_static_evtchn_add(0, 60, 5, 62), EBUSY);
        as(5);
        xenevtchn_handle *b = xenevtchn_open(NULL, 0);
        CHECK(xenevtchn_bind_static(b, 61) == 61);
        /* As Linux 6.12: the same handle again is EISCONN; a port Xen never allocated binds (and
         * never fires), and goes when unbound; past the FIFO limit, ENOMEM. Another handle: Linux
         * takes it and BUGs at exit; the mock refuses (EBUSY). */
        CHECK_ERR(xenevtchn_bind_static(b, 61), EISCONN);
        xenevtchn_handle *b2 = xenevtchn_open(NULL, 0);
        CHECK_ERR(xenevtchn_bind_static(b2, 61), EBUSY);
        xenevtchn_close(b2);
        CHECK(xenevtchn_bind_static(b, 62) == 62);
        CHECK(stats_of(5).ports == 2);
        CHECK(xenevtchn_notify(b, 62) == 0);
        CHECK(next_event(b, 100) == -1);
        CHECK(xenevtchn_unbind(b, 62) == 0);
        CHECK(stats_of(5).ports == 1);
        CHECK_ERR(xenevtchn_bind_static(b, 200000), ENOMEM);
        CHECK(xenevtchn_bind_static(a, 60) == 60);
        CHECK(xenevtchn_notify(a, 60) == 0);
        CHECK(next_event(b, 1000) == 61);
        xenevtchn_unmask(b, 61);
        /* A static port survives its handle and can be bound again. */
        xenevtchn_close(b);
        CHECK(stats_of(5).ports == 1);
        CHECK(xenevtchn_notify(a, 60) == 0);
        b = xenevtchn_open(NULL, 0);
        CHECK(xenevtchn_bind_static(b, 61) == 61);
        CHECK(next_event(b, 1000) == 61); /* the event sent while unbound was kept pending */
        xenevtchn_unmask(b, 61);
        /* As with Linux's fd, close() has unbound the ports when it returns: a notify right after
         * (no other request between, which would give the broker time to see the close) is kept
         * pending for the next handle, never lost in the closed one's memory. */
        pid_t broker = broker_pid();
        CHECK(broker > 0);
        for (int i = 0; i < 3 && broker > 0; i++) {
            /* The broker is stopped across the close and woken 50 ms later: a close that only hung
             * up would return at once, and the notify would go to the closed handle's link. */
            CHECK(kill(broker, SIGSTOP) == 0);
            pid_t waker = fork();
            if (waker == 0) {
                usleep(50 * 1000);
                kill(broker, SIGCONT);
                _exit(0);
            }
            xenevtchn_close(b);
            CHECK(xenevtchn_notify(a, 60) == 0);
            CHECK(waitpid(waker, NULL, 0) == waker);
            b = xenevtchn_open(NULL, 0);
            CHECK(xenevtchn_bind_static(b, 61) == 61);
            CHECK(next_event(b, 1000) == 61);
            xenevtchn_unmask(b, 61);
        }
        xenevtchn_close(b);
        xenevtchn_close(a);
        xenevtchn_close(r);
    }
}

/* Whether H's descriptor polls readable within MS milliseconds. */
static bool readable(xenevtchn_handle *h, int ms)
{
    struct pollfd p = {.fd = xenevtchn_fd(h), .events = POLLIN};
    return poll(&p, 1, ms) == 1;
}

static void test_evtchn_pending_many(void)
{
    TEST("event channels: many pending ports taken at once")
    {
        /* Ports of 20 handles in domain 0, so 20 links, more than one look at them returns. */
        enum { N = 40, H = 20 };
        xenevtchn_handle *ah[H];
        as(0);
        bool ok = true;
        for (int i = 0; i < H; i++)
            ok &= (ah[i] = xenevtchn_open(NULL, 0)) != NULL;
        CHECK(ok);
        as(5);
        xenevtchn_handle *b = xenevtchn_open(NULL, 0);
        CHECK(b != NULL);
        int pa[N], pb[N];
        bool seen[N];
        for (int i = 0; i < N; i++) {
            as(0);
            pa[i] = xenevtchn_bind_unbound_port(ah[i % H], 5);
            pb[i] = xenevtchn_bind_interdomain(b, 0, (uint32_t)pa[i]);
            ok &= pa[i] > 0 && pb[i] > 0;
        }
        CHECK(ok);
        /* The events of binding, all at once; unmask them all. */
        evtchn_port_t got[64];
        int n = 0, k;
        while (n < N && readable(b, 1000) && (k = xenmock_evtchn_pending_many(b, got, 64)) > 0)
            n += k;
        CHECK(n == N);
        for (int i = 0; i < N; i++)
            xenevtchn_unmask(b, (uint32_t)pb[i]);
        CHECK(xenmock_evtchn_pending_many(b, got, 64) == 0); /* nothing: 0, not -1 and no block */
        CHECK(!readable(b, 0));

        /* Every port notified: each comes once, and one call with room for all takes them all,
         * though they span more than one look at the links' eventfds. (A port notified again
         * after its event was taken comes again at its unmask, as on Linux: once each here.) */
        for (int i = 0; i < N; i++)
            ok &= xenevtchn_notify(ah[i % H], (uint32_t)pa[i]) == 0;
        CHECK(ok);
        CHECK(readable(b, 1000));
        memset(seen, 0, sizeof(seen));
        n = xenmock_evtchn_pending_many(b, got, 64);
        CHECK(n == N);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < N; j++)
                if (got[i] == (evtchn_port_t)pb[j]) {
                    ok &= !seen[j]; /* once each */
                    seen[j] = true;
                }
        for (int j = 0; j < N; j++)
            ok &= seen[j];
        CHECK(ok);
        /* Taken ports are masked: a notify now waits for the unmask. */
        CHECK(!readable(b, 0));
        CHECK(xenevtchn_notify(ah[0], (uint32_t)pa[0]) == 0);
        CHECK(!readable(b, 50));
        for (int i = 0; i < N; i++)
            xenevtchn_unmask(b, (uint32_t)pb[i]);
        CHECK(readable(b, 1000));
        CHECK(xenmock_evtchn_pending_many(b, got, 64) == 1 && got[0] == (evtchn_port_t)pb[0]);
        xenevtchn_unmask(b, (uint32_t)pb[0]);

        /* Less room than ports: the rest stay, and the descriptor stays readable until they are
         * taken, by this call or the single-port one. */
        for (int i = 0; i < N; i++)
            ok &= xenevtchn_notify(ah[i % H], (uint32_t)pa[i]) == 0;
        CHECK(ok);
        CHECK(readable(b, 1000));
        n = 0;
        CHECK(xenmock_evtchn_pending_many(b, got, 7) == 7);
        memset(seen, 0, sizeof(seen));
        for (int i = 0; i < 7; i++)
            for (int j = 0; j < N; j++)
                seen[j] |= got[i] == (evtchn_port_t)pb[j];
        CHECK(readable(b, 0));
        int one = xenevtchn_pending(b);
        for (int j = 0; j < N; j++)
            if (one == pb[j]) {
                ok &= !seen[j];
                seen[j] = true;
            }
        n = 8;
        /* A port unbound while it waits is not handed over. */
        int gone = -1;
        for (int j = 0; j < N && gone < 0; j++)
            if (!seen[j])
                gone = j;
        CHECK(gone >= 0 && xenevtchn_unbind(b, (uint32_t)pb[gone]) == 0);
        while (readable(b, 0) && (k = xenmock_evtchn_pending_many(b, got, 64)) > 0)
            for (int i = 0; i < k; i++, n++)
                for (int j = 0; j < N; j++)
                    if (got[i] == (evtchn_port_t)pb[j]) {
                        ok &= !seen[j];
                        seen[j] = true;
                    }
        CHECK(ok && n == N - 1 && !seen[gone]);
        CHECK(!readable(b, 0));
        pb[gone] = 0;
        for (int i = 0; i < N; i++)
            if (pb[i])
                xenevtchn_unmask(b, (uint32_t)pb[i]);

        for (int i = 0; i < H; i++)
            xenevtchn_close(ah[i]);
        xenevtchn_close(b);
    }
}

/* Every mapping of THIS process named NAME (a memfd), by start address; returns how many. */
static int find_maps(const char *name, void **starts, int cap)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    while (f && fgets(line, sizeof(line), f))
        if (strstr(line, name) && n < cap)
            starts[n++] = (void *)strtoul(line, NULL, 16);
    if (f)
        fclose(f);
    return n;
}

static void test_evtchn_shared_state(void)
{
    TEST("event channels: a handle cannot write its generation page; garbage in a link reaches only that link")
    {
        as(0);
        xenevtchn_handle *a = xenevtchn_open(NULL, 0);
        as(5);
        xenevtchn_handle *b = xenevtchn_open(NULL, 0);
        as(7);
        xenevtchn_handle *c = xenevtchn_open(NULL, 0);
        CHECK(a && b && c);
        void *gens[8];
        int ng = find_maps("xenmock-evtchn-gen", gens, 8);
        CHECK(ng == 3);
        for (int i = 0; i < ng; i++)
            CHECK_ERR(mprotect(gens[i], 4096, PROT_READ | PROT_WRITE), EACCES); /* opened read-only */

        /* a <-> b and a <-> c, each used once so that both links exist and are watched. */
        int pab = xenevtchn_bind_unbound_port(a, 5), pac = xenevtchn_bind_unbound_port(a, 7);
        int pb = xenevtchn_bind_interdomain(b, 0, (uint32_t)pab);
        int pc = xenevtchn_bind_interdomain(c, 0, (uint32_t)pac);
        CHECK(pab > 0 && pac > 0 && pb > 0 && pc > 0);
        CHECK(next_event(b, 1000) == pb);
        xenevtchn_unmask(b, (uint32_t)pb);
        CHECK(next_event(c, 1000) == pc);
        xenevtchn_unmask(c, (uint32_t)pc);
        CHECK(xenevtchn_notify(b, (uint32_t)pb) == 0);
        CHECK(next_event(a, 1000) == pab);
        xenevtchn_unmask(a, (uint32_t)pab);
        CHECK(xenevtchn_notify(c, (uint32_t)pc) == 0);
        CHECK(next_event(a, 1000) == pac);
        xenevtchn_unmask(a, (uint32_t)pac);
        CHECK(xenevtchn_notify(a, (uint32_t)pab) == 0);
        CHECK(next_event(b, 1000) == pb);
        xenevtchn_unmask(b, (uint32_t)pb);

        /* Garbage: every pending bit of both ends set in the a <-> b link only (b's to write), as a
         * hostile process in domain 5 could. a may wake, but never delivers pac (its peer is c). */
        void *links[8];
        int nl = find_maps("xenmock-evtchn-link", links, 8);
        CHECK(nl == 4);                                /* a and b map a<->b, a and c map a<->c */
        CHECK(xenevtchn_notify(b, (uint32_t)pb) == 0); /* sets pab's bit in a<->b, and wakes a */
        struct xm_evt_link *target = NULL;
        for (int i = 0; i < nl && !target; i++) {
            struct xm_evt_link *l = links[i];
            for (int e = 0; e < 2; e++)
                if (__atomic_load_n(&l->bits[e].pend[pab / 64], __ATOMIC_SEQ_CST) & ((uint64_t)1 << (pab % 64)))
                    target = l;
        }
        CHECK(target != NULL);
        CHECK(next_event(a, 1000) == pab);
        xenevtchn_unmask(a, (uint32_t)pab);
        for (int e = 0; target && e < 2; e++) {
            for (unsigned w = 0; w < XM_EVT_WORDS; w++)
                target->bits[e].pend[w] = ~(uint64_t)0;
            for (unsigned w = 0; w < XM_EVT_SUMMARY_WORDS; w++)
                target->bits[e].summary[w] = ~(uint64_t)0;
        }
        CHECK(xenevtchn_notify(b, (uint32_t)pb) == 0);
        int got_ab = 0, got_ac = 0, ev;
        while ((ev = next_event(a, 200)) >= 0) {
            got_ab += ev == pab;
            got_ac += ev == pac;
            xenevtchn_unmask(a, (uint32_t)ev);
        }
        CHECK(got_ac == 0); /* nothing for the channel to c */
        (void)got_ab;       /* b's own channel may go quiet: its garbage says pab is pending already */
        /* And c's channel still works both ways. */
        CHECK(xenevtchn_notify(c, (uint32_t)pc) == 0);
        CHECK(next_event(a, 1000) == pac);
        xenevtchn_unmask(a, (uint32_t)pac);
        CHECK(xenevtchn_notify(a, (uint32_t)pac) == 0);
        CHECK(next_event(c, 1000) == pc);
        xenevtchn_close(a);
        xenevtchn_close(b);
        xenevtchn_close(c);
    }
    TEST("event channels: an event left on a link for an unbound port does not swallow the next binding's")
    {
        /* Two handles that outlive their channels (a server and a client process keeping their
         * handles) meet on the same link again. The old channel's peer notifies while our port is
         * masked, then leaves; our route goes (we notify the gone peer) before we unmask; we
         * unbind, bind again (the same port number), and the new peer's first event must come. */
        as(0);
        xenevtchn_handle *s = xenevtchn_open(NULL, 0);
        as(5);
        xenevtchn_handle *c = xenevtchn_open(NULL, 0);
        CHECK(s && c);
        int ps = xenevtchn_bind_unbound_port(s, 5);
        int pc = xenevtchn_bind_interdomain(c, 0, (uint32_t)ps);
        CHECK(ps > 0 && pc > 0);
        CHECK(next_event(c, 1000) == pc); /* Xen's event at bind */
        xenevtchn_unmask(c, (uint32_t)pc);
        CHECK(xenevtchn_notify(c, (uint32_t)pc) == 0);
        CHECK(next_event(s, 1000) == ps);              /* delivered: masked until unmasked */
        CHECK(xenevtchn_notify(c, (uint32_t)pc) == 0); /* pending on the link, no wake-up */
        CHECK(xenevtchn_unbind(c, (uint32_t)pc) == 0);
        CHECK(xenevtchn_notify(s, (uint32_t)ps) == 0); /* learns the peer is gone */
        xenevtchn_unmask(s, (uint32_t)ps);
        while (next_event(s, 50) >= 0) /* a spurious event is allowed, no more */
            ;
        CHECK(xenevtchn_unbind(s, (uint32_t)ps) == 0);
        int ps2 = xenevtchn_bind_unbound_port(s, 5);
        int pc2 = xenevtchn_bind_interdomain(c, 0, (uint32_t)ps2);
        CHECK(ps2 > 0 && pc2 > 0);
        CHECK(next_event(c, 1000) == pc2);
        xenevtchn_unmask(c, (uint32_t)pc2);
        CHECK(xenevtchn_notify(c, (uint32_t)pc2) == 0);
        CHECK(next_event(s, 1000) == ps2);
        xenevtchn_close(s);
        xenevtchn_close(c);
    }
}

static void test_grants(void)
{
    TEST("grants: sharing, mapping, read-only, wrong domain, copy, unmap notify")
    {
        as(0);
        xengntshr_handle *s = xengntshr_open(NULL, 0);
        uint32_t refs[3];
        char *area = xengntshr_share_pages(s, 5, 3, refs, 1);
        CHECK(area != NULL);
        uint32_t ro_ref;
        char *ro = xengntshr_share_pages(s, 5, 1, &ro_ref, 0);
        CHECK(ro != NULL);
        strcpy(area + 4096, "hello from dom0");
        strcpy(ro, "read only");
        CHECK(stats_of(0).grants == 4);

        as(5);
        xengnttab_handle *m = xengnttab_open(NULL, 0);
        char *map = xengnttab_map_domain_grant_refs(m, 3, 0, refs, PROT_READ | PROT_WRITE);
        CHECK(map != NULL);
        if (map) {
            CHECK(strcmp(map + 4096, "hello from dom0") == 0);
            strcpy(map + 8192, "hello from dom5");
            CHECK(strcmp(area + 8192, "hello from dom5") == 0); /* the same memory */
        }
        CHECK(stats_of(5).mapped_pages == 3);
        CHECK(xengnttab_map_grant_ref(m, 0, ro_ref, PROT_READ | PROT_WRITE) == NULL && errno == EINVAL);
        char *rom = xengnttab_map_grant_ref(m, 0, ro_ref, PROT_READ);
        CHECK(rom && strcmp(rom, "read only") == 0);
        CHECK(xengnttab_map_grant_ref(m, 0, 4000, PROT_READ) == NULL && errno == EINVAL);

        /* Grant copy, per-segment status. */
        char buf[32] = {0};
        xengnttab_grant_copy_segment_t seg[2] = {0};
        seg[0].flags = GNTCOPY_source_gref;
        seg[0].source.foreign.ref = refs[1];
        seg[0].source.foreign.domid = 0;
        seg[0].dest.virt = buf;
        seg[0].len = 15;
        seg[1] = seg[0];
        seg[1].source.foreign.ref = 4000;
        CHECK(xengnttab_grant_copy(m, 2, seg) == 0);
        CHECK(seg[0].status == GNTST_okay && memcmp(buf, "hello from dom0", 15) == 0);
        CHECK(seg[1].status == GNTST_bad_gntref);

        as(7);
        xengnttab_handle *x = xengnttab_open(NULL, 0);
        CHECK(xengnttab_map_grant_ref(x, 0, refs[0], PROT_READ) == NULL && errno == EINVAL);
        xengnttab_close(x);

        /* A domU cannot map its own grant (the rig: a domU's vchan to itself fails); dom0 can. */
        as(5);
        xengntshr_handle *s5 = xengntshr_open(NULL, 0);
        uint32_t own;
        void *own_area = xengntshr_share_pages(s5, 5, 1, &own, 1);
        CHECK(own_area && xengnttab_map_grant_ref(m, 5, own, PROT_READ) == NULL);
        xengntshr_unshare(s5, own_area, 1);
        xengntshr_close(s5);

        CHECK(xengnttab_unmap(m, map, 3) == 0);
        CHECK_ERR(xengnttab_unmap(m, map, 3), EINVAL);
        CHECK(xengnttab_unmap(m, rom, 1) == 0);
        CHECK(stats_of(5).mapped_pages == 0);

        /* Unmap notify on a mapping: byte cleared and port signalled when the mapper unmaps. */
        as(0);
        xenevtchn_handle *e0 = xenevtchn_open(NULL, 0);
        int p0 = xenevtchn_bind_unbound_port(e0, 5);
        as(5);
        xenevtchn_handle *e5 = xenevtchn_open(NULL, 0);
        int p5 = xenevtchn_bind_interdomain(e5, 0, (uint32_t)p0);
        CHECK(next_event(e5, 1000) == p5);
        area[100] = 1;
        char *nm = xengnttab_map_grant_ref_notify(m, 0, refs[0], PROT_READ | PROT_WRITE, 100, (uint32_t)p5);
        CHECK(nm && nm[100] == 1);
        CHECK(xengnttab_unmap(m, nm, 1) == 0);
        CHECK(area[100] == 0);
        CHECK(next_event(e0, 1000) == p0);
        xenevtchn_close(e5);
        xenevtchn_close(e0);
        xengnttab_close(m);

        as(0);
        CHECK(xengntshr_unshare(s, area, 3) == 0);
        CHECK(xengntshr_unshare(s, ro, 1) == 0);
        CHECK(stats_of(0).grants == 0);
        xengntshr_close(s);
    }

    TEST("grants: gntalloc page limit gives ENOSPC")
    {
        as(0);
        xengntshr_handle *s = xengntshr_open(NULL, 0);
        uint32_t *refs = malloc(1100 * sizeof(uint32_t));
        void *big = xengntshr_share_pages(s, 5, 1000, refs, 1);
        CHECK(big != NULL);
        CHECK(xengntshr_share_pages(s, 5, 100, refs + 1000, 1) == NULL && errno == ENOSPC);
        xengntshr_unshare(s, big, 1000);
        xengntshr_close(s);
        free(refs);
    }

    TEST("grants: refs are the lowest free ones; 1,000 shares and maps in one handle each, released oldest first")
    {
        as(0);
        xengntshr_handle *s = xengntshr_open(NULL, 0);
        uint32_t a[3], b[2], c[4], d[1], e[2];
        void *pa = xengntshr_share_pages(s, 5, 3, a, 1);
        void *pb = xengntshr_share_pages(s, 5, 2, b, 1);
        void *pc = xengntshr_share_pages(s, 5, 4, c, 1);
        CHECK(pa && pb && pc);
        CHECK(a[0] == 8 && a[2] == 10 && b[0] == 11 && c[0] == 13 && c[3] == 16); /* Linux's first is 8 */
        CHECK(xengntshr_unshare(s, pb, 2) == 0);
        void *pd = xengntshr_share_pages(s, 5, 1, d, 1);
        CHECK(pd && d[0] == 11); /* b's first */
        void *pe = xengntshr_share_pages(s, 5, 2, e, 1);
        CHECK(pe && e[0] == 12 && e[1] == 17); /* b's second, then past c */
        CHECK(xengntshr_unshare(s, pa, 3) == 0);
        uint32_t f[4];
        void *pf = xengntshr_share_pages(s, 5, 4, f, 1);
        CHECK(pf && f[0] == 8 && f[1] == 9 && f[2] == 10 && f[3] == 18);
        xengntshr_unshare(s, pc, 4);
        xengntshr_unshare(s, pd, 1);
        xengntshr_unshare(s, pe, 2);
        xengntshr_unshare(s, pf, 4);
        CHECK(stats_of(0).grants == 0);

        enum { N = 1000 };
        void **area = calloc(N, sizeof(void *)), **map = calloc(N, sizeof(void *));
        uint32_t *ref = calloc(N, sizeof(uint32_t));
        int shared = 0, mapped = 0, unmapped = 0, unshared = 0;
        for (int i = 0; i < N; i++)
            shared += (area[i] = xengntshr_share_pages(s, 5, 1, &ref[i], 1)) != NULL;
        CHECK(shared == N && ref[0] == 8 && ref[N - 1] == 8 + N - 1);
        as(5);
        xengnttab_handle *g = xengnttab_open(NULL, 0);
        for (int i = 0; i < N; i++) {
            map[i] = xengnttab_map_grant_ref(g, 0, ref[i], PROT_READ);
            mapped += map[i] != NULL && ((volatile char *)map[i])[0] == 0;
        }
        CHECK(mapped == N);
        for (int i = 0; i < N; i++) /* oldest first: the end of a list kept newest first */
            unmapped += xengnttab_unmap(g, map[i], 1) == 0;
        CHECK(unmapped == N);
        CHECK(xengnttab_unmap(g, map[0], 1) == -1 && errno == EINVAL); /* once only */
        xengnttab_close(g);
        as(0);
        for (int i = 0; i < N; i++)
            unshared += xengntshr_unshare(s, area[i], 1) == 0;
        CHECK(unshared == N && stats_of(0).grants == 0);
        xengntshr_close(s);
        free(area);
        free(map);
        free(ref);
    }
}

static void test_xenstore(void)
{
    TEST("xenstore: paths, permissions, watches, transactions, quotas")
    {
        as(0);
        struct xs_handle *h0 = xs_open(0);
        as(5);
        struct xs_handle *h5 = xs_open(0);
        as(7);
        struct xs_handle *h7 = xs_open(0);
        CHECK(h0 && h5 && h7);
        unsigned len;
        char *v;

        CHECK(xs_write(h0, XBT_NULL, "/test/a/b", "v1", 2));
        v = xs_read(h0, XBT_NULL, "/test/a/b", &len);
        CHECK(v && len == 2 && !strcmp(v, "v1"));
        free(v);
        CHECK(xs_read(h5, XBT_NULL, "/test/a/b", &len) == NULL && errno == EACCES);
        struct xs_permissions p[2] = {{0, XS_PERM_NONE}, {5, XS_PERM_READ}};
        CHECK(xs_set_permissions(h0, XBT_NULL, "/test/a/b", p, 2));
        v = xs_read(h5, XBT_NULL, "/test/a/b", &len);
        CHECK(v != NULL);
        free(v);
        CHECK(xs_read(h7, XBT_NULL, "/test/a/b", &len) == NULL && errno == EACCES);
        CHECK(!xs_write(h5, XBT_NULL, "/test/a/b", "x", 1) && errno == EACCES);
        CHECK(xs_read(h0, XBT_NULL, "/test/nope", &len) == NULL && errno == ENOENT);
        CHECK(!xs_write(h0, XBT_NULL, "bad//path", "x", 1) && errno == EINVAL);
        CHECK(!xs_write(h0, XBT_NULL, "/trailing/", "x", 1) && errno == EINVAL);
        char big[5000];
        memset(big, 'x', sizeof(big));
        CHECK(!xs_write(h0, XBT_NULL, "/test/big", big, sizeof(big)) && errno == E2BIG);
        CHECK(xs_rm(h0, XBT_NULL, "/test/a/missing"));                      /* parent exists */
        CHECK(!xs_rm(h0, XBT_NULL, "/test/zz/missing") && errno == ENOENT); /* it does not */

        /* Relative paths and ownership: a domU owns what it creates in its data/ directory. */
        CHECK(xs_write(h5, XBT_NULL, "data/mine", "1", 1));
        unsigned np;
        struct xs_permissions *got = xs_get_permissions(h0, XBT_NULL, "/local/domain/5/data/mine", &np);
        CHECK(got && np >= 1 && got[0].id == 5);
        free(got);
        CHECK(!xs_write(h7, XBT_NULL, "/local/domain/5/data/x", "1", 1) && errno == EACCES);
        /* An unprivileged owner may not give a node away. */
        struct xs_permissions away[1] = {{7, XS_PERM_NONE}};
        CHECK(!xs_set_permissions(h5, XBT_NULL, "data/mine", away, 1) && errno == EPERM);

        /* Watches fire once when set, then on changes below, only for readers. */
        CHECK(xs_watch(h5, "/test/a", "tok5"));
        CHECK(xs_watch(h7, "/test/a", "tok7"));
        unsigned n;
        char **w = xs_read_watch(h5, &n);
        CHECK(w && !strcmp(w[XS_WATCH_PATH], "/test/a") && !strcmp(w[XS_WATCH_TOKEN], "tok5"));
        free(w);
        w = xs_read_watch(h7, &n);
        free(w);
        CHECK(xs_write(h0, XBT_NULL, "/test/a/b", "v2", 2));
        struct pollfd pf = {.fd = xs_fileno(h5), .events = POLLIN};
        CHECK(poll(&pf, 1, 1000) == 1);
        w = xs_check_watch(h5);
        CHECK(w && !strcmp(w[XS_WATCH_PATH], "/test/a/b"));
        free(w);
        struct pollfd pf7 = {.fd = xs_fileno(h7), .events = POLLIN};
        CHECK(poll(&pf7, 1, 100) == 0); /* dom7 may not read /test/a/b: no event */
        CHECK(xs_watch(h5, "data", "rel"));
        w = xs_read_watch(h5, &n);
        CHECK(w && !strcmp(w[XS_WATCH_PATH], "data")); /* relative watches report relative paths */
        free(w);
        CHECK(xs_unwatch(h5, "data", "rel"));
        CHECK(xs_unwatch(h5, "/test/a", "tok5"));
        CHECK(!xs_unwatch(h5, "/test/a", "tok5") && errno == ENOENT);

        /* Transactions: isolated until the end, EAGAIN when what they touched changed. */
        xs_transaction_t t = xs_transaction_start(h0);
        CHECK(t != XBT_NULL);
        CHECK(xs_write(h0, t, "/test/t1", "in-txn", 6));
        CHECK(xs_read(h0, XBT_NULL, "/test/t1", &len) == NULL);
        CHECK(xs_transaction_end(h0, t, false));
        v = xs_read(h0, XBT_NULL, "/test/t1", &len);
        CHECK(v && !strcmp(v, "in-txn"));
        free(v);
        t = xs_transaction_start(h0);
        v = xs_read(h0, t, "/test/t1", &len);
        free(v);
        CHECK(xs_write(h0, XBT_NULL, "/test/t1", "outside", 7));
        CHECK(xs_write(h0, t, "/test/t2", "x", 1));
        CHECK(!xs_transaction_end(h0, t, false) && errno == EAGAIN);
        CHECK(xs_read(h0, XBT_NULL, "/test/t2", &len) == NULL);
        /* A transaction that writes a/b (making a) and then sets a's permissions commits: a node it
         * made itself is judged as the tree stood when it started (a toolstack creating a device
         * does exactly this). */
        t = xs_transaction_start(h0);
        CHECK(xs_write(h0, t, "/test/dev/a/b", "1", 1));
        struct xs_permissions pa[1] = {{.id = 5, .perms = XS_PERM_NONE}};
        CHECK(xs_set_permissions(h0, t, "/test/dev/a", pa, 1));
        CHECK(xs_transaction_end(h0, t, false));
        v = xs_read(h0, XBT_NULL, "/test/dev/a/b", &len);
        CHECK(v && !strcmp(v, "1"));
        free(v);
        xs_transaction_t ts[11];
        int opened = 0;
        for (int i = 0; i < 11; i++)
            if ((ts[i] = xs_transaction_start(h5)) != XBT_NULL)
                opened++;
        CHECK(opened == 10 && errno == ENOSPC);
        for (int i = 0; i < 10; i++)
            xs_transaction_end(h5, ts[i], true);
        CHECK(stats_of(5).transactions == 0);

        CHECK(xs_rm(h0, XBT_NULL, "/test"));
        CHECK(xs_rm(h5, XBT_NULL, "data/mine"));
        xs_close(h0);
        xs_close(h5);
        xs_close(h7);
        CHECK(stats_of(5).watches == 0);
    }

    TEST("xenstore: a transaction copies what it reaches; the node quota counts nodes as they come and go")
    {
        as(0);
        struct xs_handle *h0 = xs_open(0);
        as(5);
        struct xs_handle *h5 = xs_open(0);
        CHECK(h0 && h5);
        unsigned len;

        /* Its own changes only, however its reads interleave with them: a child removed in the
         * transaction stays removed when its siblings are read after, and a listing has the live
         * children in the live order, then the transaction's new ones. */
        CHECK(xs_write(h0, XBT_NULL, "/tx/d/a", "a", 1) && xs_write(h0, XBT_NULL, "/tx/d/b", "b", 1) &&
              xs_write(h0, XBT_NULL, "/tx/d/c", "c", 1));
        xs_transaction_t t = xs_transaction_start(h0);
        CHECK(read_is(h0, t, "/tx/d/b", "b"));
        CHECK(xs_write(h0, t, "/tx/d/new", "n", 1));
        CHECK(xs_rm(h0, t, "/tx/d/a"));
        CHECK(xs_read(h0, t, "/tx/d/a", &len) == NULL && errno == ENOENT);
        CHECK(read_is(h0, t, "/tx/d/c", "c"));
        CHECK(xs_read(h0, t, "/tx/d/a", &len) == NULL && errno == ENOENT);
        CHECK(dir_is(h0, t, "/tx/d", "b c new"));
        CHECK(dir_is(h0, XBT_NULL, "/tx/d", "a b c"));
        CHECK(xs_transaction_end(h0, t, false));
        CHECK(dir_is(h0, XBT_NULL, "/tx/d", "b c new"));

        /* As xenstored since Xen 4.9: a node changed outside after the start but before the
         * transaction first reads it is read as it now is, and does not fail the transaction (one
         * changed after the transaction read it does: above), nor does one it never touched. */
        t = xs_transaction_start(h0);
        CHECK(xs_write(h0, XBT_NULL, "/tx/d/b", "b2", 2));
        CHECK(xs_write(h0, XBT_NULL, "/tx/other", "o", 1));
        CHECK(read_is(h0, t, "/tx/d/b", "b2"));
        CHECK(xs_write(h0, t, "/tx/d/c", "c2", 2));
        CHECK(xs_transaction_end(h0, t, false));
        CHECK(read_is(h0, XBT_NULL, "/tx/d/c", "c2"));
        /* A child made outside under a directory the transaction has reached, then listed: the
         * listing changed since the transaction read the directory, so EAGAIN. */
        t = xs_transaction_start(h0);
        CHECK(read_is(h0, t, "/tx/d", ""));
        CHECK(xs_write(h0, XBT_NULL, "/tx/d/late", "l", 1));
        CHECK(dir_is(h0, t, "/tx/d", "b c new late"));
        CHECK(!xs_transaction_end(h0, t, false) && errno == EAGAIN);
        /* xenstored's parent rule: a transaction that changes a node that is there touches that
         * node alone, so siblings coming and going beside it do not fail it; one that makes a
         * node touches the directory it adds to, and a sibling made meanwhile fails it. */
        t = xs_transaction_start(h0);
        CHECK(xs_write(h0, t, "/tx/d/c", "c5", 2));
        CHECK(xs_write(h0, XBT_NULL, "/tx/d/z", "z", 1) && xs_rm(h0, XBT_NULL, "/tx/d/z"));
        CHECK(xs_transaction_end(h0, t, false));
        CHECK(read_is(h0, XBT_NULL, "/tx/d/c", "c5"));
        t = xs_transaction_start(h0);
        CHECK(xs_write(h0, t, "/tx/d/made/deep", "m", 1));
        CHECK(xs_write(h0, XBT_NULL, "/tx/d/z", "z", 1));
        CHECK(!xs_transaction_end(h0, t, false) && errno == EAGAIN);
        CHECK(xs_read(h0, XBT_NULL, "/tx/d/made", &len) == NULL && errno == ENOENT);
        /* A removed node made again outside (a new generation, the same value): EAGAIN. */
        t = xs_transaction_start(h0);
        CHECK(read_is(h0, t, "/tx/d/new", "n"));
        CHECK(xs_rm(h0, XBT_NULL, "/tx/d/new") && xs_write(h0, XBT_NULL, "/tx/d/new", "n", 1));
        CHECK(xs_write(h0, t, "/tx/d/c", "c4", 2));
        CHECK(!xs_transaction_end(h0, t, false) && errno == EAGAIN);
        CHECK(xs_rm(h0, XBT_NULL, "/tx"));

        /* The quota: 1,000 nodes a domain owns, counted as they are made, removed and given. */
        uint32_t base = stats_of(5).nodes;
        CHECK(base >= 1 && base < 900);
        CHECK(xs_mkdir(h5, XBT_NULL, "data/q"));
        char name[64];
        bool all = true;
        for (uint32_t i = 0; i < QUOTA - base - 1 && all; i++) {
            snprintf(name, sizeof(name), "data/q/%u", i);
            all = xs_write(h5, XBT_NULL, name, "x", 1);
        }
        CHECK(all && stats_of(5).nodes == QUOTA);
        CHECK(!xs_write(h5, XBT_NULL, "data/q/over", "x", 1) && errno == ENOSPC);
        /* In a transaction: what it removed makes room, what it made counts, before the end. */
        t = xs_transaction_start(h5);
        CHECK(xs_rm(h5, t, "data/q/0"));
        CHECK(xs_write(h5, t, "data/q/in-txn", "x", 1));
        CHECK(!xs_write(h5, t, "data/q/in-txn-2", "x", 1) && errno == ENOSPC);
        CHECK(xs_transaction_end(h5, t, false));
        CHECK(stats_of(5).nodes == QUOTA);
        /* A big directory's children are found by name (hashed) after removals and additions. */
        unsigned nq = 0;
        char **q = xs_directory(h5, XBT_NULL, "data/q", &nq);
        CHECK(q && nq == QUOTA - base - 1 && !strcmp(q[nq - 1], "in-txn") && !strcmp(q[0], "1"));
        free(q);
        bool found = true;
        for (uint32_t i = 1; i < QUOTA - base - 1 && found; i++) {
            snprintf(name, sizeof(name), "data/q/%u", i);
            found = read_is(h5, XBT_NULL, name, "x");
        }
        CHECK(found);
        CHECK(xs_read(h5, XBT_NULL, "data/q/0", &len) == NULL && errno == ENOENT);
        CHECK(read_is(h5, XBT_NULL, "data/q/in-txn", "x"));
        /* A node dom0 gives to domain 5 counts for 5; taken back, it does not. */
        CHECK(xs_write(h0, XBT_NULL, "/given", "g", 1));
        struct xs_permissions to5[1] = {{5, XS_PERM_NONE}}, to0[1] = {{0, XS_PERM_NONE}};
        CHECK(xs_set_permissions(h0, XBT_NULL, "/given", to5, 1));
        CHECK(stats_of(5).nodes == QUOTA + 1);
        CHECK(xs_set_permissions(h0, XBT_NULL, "/given", to0, 1));
        CHECK(stats_of(5).nodes == QUOTA);
        CHECK(xs_rm(h0, XBT_NULL, "/given"));
        CHECK(xs_rm(h5, XBT_NULL, "data/q"));
        CHECK(stats_of(5).nodes == base);
        CHECK(xs_write(h5, XBT_NULL, "data/q/again", "x", 1));
        CHECK(xs_rm(h5, XBT_NULL, "data/q"));
        xs_close(h0);
        xs_close(h5);
    }
}

static int wait_events(struct libxenvchan *c, int ms)
{
    struct pollfd p = {.fd = libxenvchan_fd_for_select(c), .events = POLLIN};
    if (poll(&p, 1, ms) == 1)
        return libxenvchan_wait(c);
    return -1;
}

static void test_vchan_permissions_and_hostile(void)
{
    TEST("vchan: a third domain cannot read the node, map the grant or bind the port")
    {
        as(0);
        struct libxenvchan *srv = libxenvchan_server_init(NULL, 5, "data/vchan/5/perm", 0, 0);
        CHECK(srv != NULL);
        struct xs_handle *h0 = xs_open(0);
        unsigned len;
        char *ref = xs_read(h0, XBT_NULL, "/local/domain/0/data/vchan/5/perm/ring-ref", &len);
        char *port = xs_read(h0, XBT_NULL, "/local/domain/0/data/vchan/5/perm/event-channel", &len);
        CHECK(ref && port);
        as(7);
        struct xs_handle *h7 = xs_open(0);
        CHECK(xs_read(h7, XBT_NULL, "/local/domain/0/data/vchan/5/perm/ring-ref", &len) == NULL && errno == EACCES);
        xengnttab_handle *g7 = xengnttab_open(NULL, 0);
        CHECK(ref && xengnttab_map_grant_ref(g7, 0, (uint32_t)atoi(ref), PROT_READ) == NULL && errno == EINVAL);
        xenevtchn_handle *e7 = xenevtchn_open(NULL, 0);
        CHECK_ERR(xenevtchn_bind_interdomain(e7, 0, port ? (uint32_t)atoi(port) : 0), EINVAL);
        CHECK(libxenvchan_client_init(NULL, 0, "/local/domain/0/data/vchan/5/perm") == NULL);
        xenevtchn_close(e7);
        xengnttab_close(g7);
        xs_close(h7);
        as(5);
        struct libxenvchan *cli = libxenvchan_client_init(NULL, 0, "/local/domain/0/data/vchan/5/perm");
        CHECK(cli != NULL);
        if (cli)
            libxenvchan_close(cli);
        free(ref);
        free(port);
        xs_close(h0);
        as(0);
        libxenvchan_close(srv);
        CHECK(stats_of(0).grants == 0 && stats_of(0).ports == 1 /* the static port 60 */);
    }

    TEST("vchan: a hostile client cannot make the server overrun its rings")
    {
        as(0);
        struct libxenvchan *srv = libxenvchan_server_init(NULL, 5, "data/vchan/5/hostile", 4096, 4096);
        CHECK(srv != NULL);
        srv->blocking = 0;
        as(5);
        struct xs_handle *h = xs_open(0);
        unsigned len;
        char *ref = xs_read(h, XBT_NULL, "/local/domain/0/data/vchan/5/hostile/ring-ref", &len);
        xengnttab_handle *g = xengnttab_open(NULL, 0);
        struct vchan_interface *page =
            ref ? xengnttab_map_grant_ref(g, 0, (uint32_t)atoi(ref), PROT_READ | PROT_WRITE) : NULL;
        CHECK(page != NULL);
        if (page && srv) {
            page->cli_live = 1;
            char buf[8192];
            /* A producer index claiming far more than the ring holds. */
            page->left.prod = 0x7fffffff;
            CHECK_ERR(libxenvchan_read(srv, buf, sizeof(buf)), EPROTO);
            CHECK(libxenvchan_is_open(srv) == 0);
            CHECK_ERR(libxenvchan_write(srv, buf, 10), EPROTO);
            /* Orders, grants and our own indices scribbled over: the server uses its own copies. */
            page->left_order = 31;
            page->right_order = 3;
            page->right.cons = 12345;
            page->right.prod = 999999;
            page->grants[0] = 0xffffffff;
            page->cli_live = 200;
            page->srv_notify = 0xff;
            CHECK(libxenvchan_is_open(srv) == 0);
            CHECK(libxenvchan_data_ready(srv) == 0);
            CHECK(libxenvchan_buffer_space(srv) == 0);
        }
        if (page)
            xengnttab_unmap(g, page, 1);
        xengnttab_close(g);
        xs_close(h);
        free(ref);
        as(0);
        if (srv)
            libxenvchan_close(srv);
    }

    TEST("vchan: a hostile server cannot make the client map or touch the wrong memory")
    {
        /* A fake server: a page with impossible orders published in xenstore. */
        as(0);
        xengntshr_handle *s = xengntshr_open(NULL, 0);
        xenevtchn_handle *e = xenevtchn_open(NULL, 0);
        struct xs_handle *h = xs_open(0);
        int port = xenevtchn_bind_unbound_port(e, 5);
        uint32_t ref;
        struct vchan_interface *page = xengntshr_share_pages(s, 5, 1, &ref, 1);
        CHECK(page && port > 0);
        uint16_t bad[][2] = {
            {10, 10} /* two rings at one offset */, {25, 12} /* order too big */, {11, 9} /* too small */};
        for (unsigned i = 0; i < 3 && page; i++) {
            memset(page, 0, 4096);
            page->left_order = bad[i][0];
            page->right_order = bad[i][1];
            page->srv_live = 1;
            page->cli_live = 2;
            char val[16];
            snprintf(val, sizeof(val), "%u", ref);
            xs_write(h, XBT_NULL, "/local/domain/0/data/vchan/5/evil/ring-ref", val, (unsigned)strlen(val));
            snprintf(val, sizeof(val), "%d", port);
            xs_write(h, XBT_NULL, "/local/domain/0/data/vchan/5/evil/event-channel", val, (unsigned)strlen(val));
            struct xs_permissions p[2] = {{0, 0}, {5, XS_PERM_READ}};
            xs_set_permissions(h, XBT_NULL, "/local/domain/0/data/vchan/5/evil/ring-ref", p, 2);
            xs_set_permissions(h, XBT_NULL, "/local/domain/0/data/vchan/5/evil/event-channel", p, 2);
            as(5);
            struct libxenvchan *c = libxenvchan_client_init(NULL, 0, "/local/domain/0/data/vchan/5/evil");
            CHECK(c == NULL && errno == EPROTO);
            if (c)
                libxenvchan_close(c);
            as(0);
            /* The refused client unbound its port: the server's end is unbound again and reusable. */
        }
        /* A server whose indices go bad after the client connected. */
        struct libxenvchan *srv = libxenvchan_server_init(NULL, 5, "data/vchan/5/late", 1024, 1024);
        as(5);
        struct libxenvchan *cli = libxenvchan_client_init(NULL, 0, "/local/domain/0/data/vchan/5/late");
        CHECK(srv && cli);
        if (srv && cli) {
            cli->blocking = 0;
            char buf[4096];
            CHECK(libxenvchan_write(cli, "ok", 2) == 2);
            srv->ring->right.prod = srv->ring->right.cons + 5000; /* more than a 2 KiB ring */
            CHECK_ERR(libxenvchan_read(cli, buf, sizeof(buf)), EPROTO);
            srv->ring->left.cons = 0xdead; /* consumer claims to have taken what was never written */
            CHECK_ERR(libxenvchan_write(cli, buf, 1), EPROTO);
            CHECK(libxenvchan_is_open(cli) == 0);
        }
        if (cli)
            libxenvchan_close(cli);
        as(0);
        if (srv)
            libxenvchan_close(srv);
        if (page)
            xengntshr_unshare(s, page, 1);
        xs_rm(h, XBT_NULL, "/local/domain/0/data/vchan/5/evil");
        xs_close(h);
        xenevtchn_close(e);
        xengntshr_close(s);
        (void)wait_events;
    }
}

/* The copy in progress meets a page it may not touch: the handler notes the shared index at that
 * moment and jumps out of the copy. */
static sigjmp_buf piece_jmp;
static const uint32_t *piece_index;
static volatile uint32_t piece_seen;
static void piece_fault(int sig)
{
    (void)sig;
    piece_seen = __atomic_load_n(piece_index, __ATOMIC_ACQUIRE);
    siglongjmp(piece_jmp, 1);
}

/* Copies SIZE bytes with xv_vchan_writev (WRITE) or xv_vchan_read from or to a buffer whose page
 * at FAULT_AT is inaccessible. Returns the shared index (the writer's prod or the reader's cons)
 * when the copy reached that page, relative to its value before, or -1 if it never did. */
static int64_t index_at_fault(struct libxenvchan *c, int write, size_t size, size_t fault_at)
{
    uint8_t *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return -1;
    memset(buf, 0x5a, size);
    mprotect(buf + fault_at, 4096, PROT_NONE);
    piece_index = write ? &c->write.shr->prod : &c->read.shr->cons;
    uint32_t before = __atomic_load_n(piece_index, __ATOMIC_ACQUIRE);
    struct sigaction sa = {.sa_handler = piece_fault}, old;
    sigaction(SIGSEGV, &sa, &old);
    int64_t r = -1;
    if (sigsetjmp(piece_jmp, 1) == 0) {
        struct iovec iov = {buf, size};
        if (write)
            xv_vchan_writev(c, &iov, 1);
        else
            xv_vchan_read(c, buf, size);
    } else {
        r = (int64_t)(uint32_t)(piece_seen - before);
    }
    sigaction(SIGSEGV, &old, NULL);
    munmap(buf, size);
    return r;
}

/* A server in dom0 at NODE and its client in domain 5, rings of SIZE bytes each way. */
static int vchan_pair(const char *node, size_t size, struct libxenvchan **srv, struct libxenvchan **cli)
{
    char path[128];
    snprintf(path, sizeof(path), "/local/domain/0/%s", node);
    as(0);
    *srv = libxenvchan_server_init(NULL, 5, node, size, size);
    as(5);
    *cli = *srv ? libxenvchan_client_init(NULL, 0, path) : NULL;
    as(0);
    if (*cli)
        (*cli)->blocking = 0;
    return *srv && *cli;
}

static void vchan_pair_close(struct libxenvchan *srv, struct libxenvchan *cli)
{
    if (cli) {
        as(5);
        libxenvchan_close(cli);
        as(0);
    }
    if (srv)
        libxenvchan_close(srv);
}

static void test_vchan_pieces(void)
{
    TEST("vchan: our writev and read hand a quarter of the ring or more over in pieces of 1/32 of it")
    {
        struct libxenvchan *srv, *cli;
        CHECK(vchan_pair("data/vchan/5/pieces", 65536, &srv, &cli));
        if (srv && cli) {
            CHECK(srv->write.order == 16 && cli->read.order == 16);
            /* The client waits for data: the first 2 KiB piece tells it, the rest does not again. */
            while (next_event(cli->event, 0) >= 0)
                xenevtchn_unmask(cli->event, cli->event_port);
            CHECK(libxenvchan_data_ready(cli) == 0);
            /* A copy of less than a quarter of the ring is published whole, when it is done. */
            CHECK(index_at_fault(srv, 1, 8192, 4096) == 0);
            CHECK(libxenvchan_data_ready(cli) == 0);
            /* A larger one reaches its 17th piece: the first 16 (32 KiB) are published. */
            CHECK(index_at_fault(srv, 1, 65536, 32768) == 32768);
            CHECK(libxenvchan_data_ready(cli) == 32768);
            CHECK(next_event(cli->event, 1000) == (int)cli->event_port);
            xenevtchn_unmask(cli->event, cli->event_port);
            /* The reader's copy of those 32 KiB reaches its third piece: the first two are handed back. */
            CHECK(index_at_fault(cli, 0, 32768, 4096) == 4096);
        }
        vchan_pair_close(srv, cli);
    }
    TEST("vchan: pieces keep the data whole across the ring's end, gathered and read in odd amounts")
    {
        struct libxenvchan *srv, *cli;
        CHECK(vchan_pair("data/vchan/5/pieces2", 4096, &srv, &cli));
        if (srv && cli) {
            static uint8_t out[16384], in[16384];
            for (size_t i = 0; i < sizeof(out); i++)
                out[i] = (uint8_t)(i * 131 + (i >> 8));
            uint32_t size = 1u << srv->write.order;
            size_t sent = 0, got = 0;
            int events = 0;
            /* Odd amounts, so that pieces start anywhere and cross the end of the ring. */
            for (int round = 0; got < sizeof(in) && round < 10000; round++) {
                while (next_event(cli->event, 0) >= 0) {
                    events++;
                    xenevtchn_unmask(cli->event, cli->event_port);
                }
                libxenvchan_data_ready(cli);
                size_t want = sizeof(out) - sent < 3001 ? sizeof(out) - sent : 3001;
                struct iovec iov[2] = {{out + sent, want / 3}, {out + sent + want / 3, want - want / 3}};
                int w = want ? xv_vchan_writev(srv, iov, 2) : 0;
                CHECK(w >= 0 && (uint32_t)w <= size);
                sent += w > 0 ? (size_t)w : 0;
                int r = xv_vchan_read(cli, in + got, 1777);
                CHECK(r >= 0);
                got += r > 0 ? (size_t)r : 0;
            }
            CHECK(got == sizeof(in) && memcmp(in, out, sizeof(in)) == 0);
            CHECK(events > 0);
        }
        vchan_pair_close(srv, cli);
    }
}

static void test_destroy(void)
{
    TEST("destroying a domain: no unmap notification, no event, peers unbound, @releaseDomain")
    {
        CHECK_ERR(xenmock_destroy_domain(0), EPERM);
        CHECK_ERR(xenmock_destroy_domain(999), ESRCH);
        as(0);
        CHECK(xenmock_introduce_domain(8) == 0);
        struct xs_handle *xs = xs_open(0);
        xenevtchn_handle *e0 = xenevtchn_open(NULL, 0);
        xengntshr_handle *s0 = xengntshr_open(NULL, 0);
        xengnttab_handle *m0 = xengnttab_open(NULL, 0);
        uint32_t ref0;
        char *page0 = xengntshr_share_pages(s0, 8, 1, &ref0, 1);
        CHECK(page0 != NULL);

        as(8);
        xenevtchn_handle *e8 = xenevtchn_open(NULL, 0);
        xengntshr_handle *s8 = xengntshr_open(NULL, 0);
        xengnttab_handle *m8 = xengnttab_open(NULL, 0);
        int p8 = xenevtchn_bind_unbound_port(e8, 0);
        uint32_t ref8;
        char *page8 = xengntshr_share_pages(s8, 0, 1, &ref8, 1);
        CHECK(p8 > 0 && page8 != NULL);
        if (page8)
            strcpy(page8, "left behind");

        as(0);
        int p0 = xenevtchn_bind_interdomain(e0, 8, (uint32_t)p8);
        CHECK(p0 > 0);
        while (next_event(e0, 50) >= 0) /* the pending bit of a fresh bind */
            xenevtchn_unmask(e0, (evtchn_port_t)p0);
        as(8);
        /* Dom8 maps dom0's page asking for an unmap notification: clear byte 100, signal p8. */
        char *m = page0 ? xengnttab_map_grant_ref_notify(m8, 0, ref0, PROT_READ | PROT_WRITE, 100, (uint32_t)p8) : NULL;
        CHECK(m != NULL);
        if (page0)
            page0[100] = 1;
        as(0);
        char *seen = page8 ? xengnttab_map_grant_ref(m0, 8, ref8, PROT_READ) : NULL;
        CHECK(seen != NULL);
        CHECK(xs_is_domain_introduced(xs, 8));
        CHECK(xs_watch(xs, "@releaseDomain", "rel"));
        unsigned n;
        free(xs_read_watch(xs, &n)); /* the initial firing */

        CHECK(xenmock_destroy_domain(8) == 0);
        CHECK(next_event(e0, 200) == -1); /* no event: Xen sends none, and dom8's kernel is gone */
        CHECK(page0 && page0[100] == 1);  /* no unmap notification either */
        char **w = xs_read_watch(xs, &n);
        CHECK(w && strcmp(w[XS_WATCH_PATH], "@releaseDomain") == 0);
        free(w);
        CHECK(!xs_is_domain_introduced(xs, 8));
        CHECK(xs_read(xs, XBT_NULL, "/local/domain/8", &n) == NULL && errno == ENOENT);
        CHECK(seen && strcmp(seen, "left behind") == 0);           /* what dom0 mapped stays mapped */
        CHECK(xenevtchn_notify(e0, (evtchn_port_t)p0) == 0);       /* an unbound port: nowhere to go */
        CHECK_ERR(xenevtchn_notify(e8, (evtchn_port_t)p8), EPIPE); /* dom8's handles are cut */
        CHECK(stats_of(8).grants == 0 && stats_of(8).ports == 0 && stats_of(8).connections == 0);
        if (seen)
            xengnttab_unmap(m0, seen, 1);
        if (page0)
            xengntshr_unshare(s0, page0, 1);
        xenevtchn_unbind(e0, (evtchn_port_t)p0);
        xenevtchn_close(e8);
        xengntshr_close(s8);
        xengnttab_close(m8);
        xenevtchn_close(e0);
        xengntshr_close(s0);
        xengnttab_close(m0);
        xs_close(xs);
    }
    TEST("a destroyed domain stays gone until it is introduced again")
    {
        /* A process of the dead domain that connects late (before its SIGKILL lands) gets nothing. */
        as(8);
        xenevtchn_handle *late = xenevtchn_open(NULL, 0);
        CHECK(late == NULL && errno == ESRCH);
        struct xs_handle *xs8 = xs_open(0);
        CHECK(xs8 == NULL && errno == ESRCH);
        as(0);
        CHECK(stats_of(8).connections == 0);
        CHECK(xenmock_introduce_domain(8) == 0);
        as(8);
        late = xenevtchn_open(NULL, 0);
        CHECK(late != NULL);
        as(0);
        if (late)
            xenevtchn_close(late);
        if (xs8)
            xs_close(xs8);
    }
}

static void test_no_leaks(void)
{
    TEST("nothing leaked by any domain")
    {
        struct xenmock_stats st[64];
        int n = xenmock_stats(XENMOCK_ALL_DOMAINS, st, 64);
        for (int i = 0; i < n; i++) {
            /* The static pair 0:60 <-> 5:61 stays: Xen never closes a static channel. */
            uint32_t static_ports = (st[i].domid == 0 || st[i].domid == 5) ? 1 : 0;
            CHECK(st[i].grants == 0 && st[i].mapped_pages == 0 && st[i].ports == static_ports && st[i].watches == 0 &&
                  st[i].transactions == 0);
            if (st[i].ports || st[i].grants)
                fprintf(stderr, "  domain %u: grants %u mapped %u ports %u\n", st[i].domid, st[i].grants,
                        st[i].mapped_pages, st[i].ports);
        }
    }
}

int main(void)
{
    alarm(120);
    /* Keep one handle open so the broker (and the static channels) stay for the whole run. */
    struct xs_handle *keep = xs_open(0);
    if (!keep) {
        perror("xs_open");
        return 1;
    }
    test_evtchn();
    test_evtchn_shared_state();
    test_evtchn_pending_many();
    test_grants();
    test_xenstore();
    test_vchan_permissions_and_hostile();
    test_vchan_pieces();
    test_destroy();
    test_no_leaks();
    xs_close(keep);
    return h_finish("test_mock");
}
