/*
 * C reference measurements, each side by side with a pipe between two processes:
 *
 *   vchan_bench throughput RING WRITE BYTES   server->client then client->server, MB/s
 *   vchan_bench latency RING COUNT            64-byte request/response round trips, p50/p99 us
 *   vchan_bench evtchn COUNT                  bare event channel round trips (notify, wait, unmask)
 *   vchan_bench pipe-throughput WRITE BYTES | pipe-latency COUNT
 *   vchan_bench memcpy BYTES                  one core's memcpy bandwidth
 *
 * One JSON object per line on stdout. The vchan side runs in domains 0 and 5 (two processes) on the
 * mock; on real Xen set VCHAN_BENCH_PEER=0 for dom0 <-> dom0 (both processes in dom0).
 * Linked against libxenvchan: the mock's by default; any libxenvchan with LD_LIBRARY_PATH.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xenevtchn.h>
#include <libxenvchan.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench_id; /* the parent's pid, fixed before forking so both sides agree */

static const char *path_for(int peer_view_of_server)
{
    static char p[64];
    snprintf(p, sizeof(p), "%sdata/vchan/5/bench-%d", peer_view_of_server ? "/local/domain/0/" : "", bench_id);
    return p;
}

static struct libxenvchan *open_side(int server, size_t ring)
{
    struct libxenvchan *c = NULL;
    if (server) {
        const char *peer = getenv("VCHAN_BENCH_PEER");
        c = libxenvchan_server_init(NULL, peer ? atoi(peer) : 5, path_for(0), ring, ring);
        if (!c)
            return NULL;
        c->blocking = 1;
        while (libxenvchan_is_open(c) == 2)
            libxenvchan_wait(c);
    } else {
        for (int i = 0; i < 500 && !c; i++) {
            c = libxenvchan_client_init(NULL, 0, path_for(1));
            if (!c)
                usleep(10000);
        }
        if (c) {
            c->blocking = 1;
            /* libxenvchan_client_init sends no event: without one, a server waiting in
             * libxenvchan_wait() learns of us only at our first write (latency: never). */
            xenevtchn_notify(c->event, c->event_port);
        }
    }
    return c;
}

static int write_all(struct libxenvchan *c, const char *buf, size_t n)
{
    while (n) {
        int w = libxenvchan_write(c, buf, n);
        if (w <= 0)
            return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(struct libxenvchan *c, char *buf, size_t n)
{
    while (n) {
        int r = libxenvchan_read(c, buf, n);
        if (r <= 0)
            return -1;
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Runs CHILD in domain 5 in a forked process; the parent is domain 0. */
static pid_t fork_domain5(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("XEN_MOCK_DOMID", "5", 1);
        return 0;
    }
    return pid;
}

static void vchan_throughput(size_t ring, size_t wsize, uint64_t bytes)
{
    char *buf = malloc(wsize > 65536 ? wsize : 65536);
    memset(buf, 0xab, wsize);
    setenv("XEN_MOCK_DOMID", "0", 1);
    pid_t pid = fork_domain5();
    int server = pid != 0;
    struct libxenvchan *c = open_side(server, ring);
    if (!c) {
        perror(server ? "server_init" : "client_init");
        exit(1);
    }
    for (int dir = 0; dir < 2; dir++) {
        int sender = (dir == 0) == server;
        /* A one-byte handshake so both sides start together. */
        char sync = 1;
        if (sender)
            read_all(c, &sync, 1);
        else
            write_all(c, &sync, 1);
        double t0 = now(), c0 = cpu_self();
        if (sender) {
            for (uint64_t done = 0; done < bytes; done += wsize)
                write_all(c, buf, wsize);
            read_all(c, &sync, 1); /* the receiver has everything */
        } else {
            uint64_t got = 0;
            while (got < bytes) {
                int r = libxenvchan_read(c, buf, 65536);
                if (r <= 0)
                    exit(2);
                got += (uint64_t)r;
            }
            write_all(c, &sync, 1);
        }
        double dt = now() - t0, cpu = cpu_self() - c0;
        if (sender)
            printf("{\"bench\":\"vchan-c\",\"direction\":\"%s\",\"ring\":%zu,\"write\":%zu,\"bytes\":%llu,"
                   "\"seconds\":%.6f,\"MBps\":%.1f,\"senderCpuSeconds\":%.4f}\n",
                   server ? "dom0->domU" : "domU->dom0", ring, wsize, (unsigned long long)bytes, dt, bytes / dt / 1e6,
                   cpu);
        else
            printf("{\"bench\":\"vchan-c-receiver\",\"direction\":\"%s\",\"ring\":%zu,\"write\":%zu,"
                   "\"receiverCpuSeconds\":%.4f}\n",
                   server ? "domU->dom0" : "dom0->domU", ring, wsize, cpu);
        fflush(stdout);
    }
    libxenvchan_close(c);
    if (!server)
        _exit(0);
    waitpid(pid, NULL, 0);
    free(buf);
}

static void vchan_latency(size_t ring, int count)
{
    setenv("XEN_MOCK_DOMID", "0", 1);
    pid_t pid = fork_domain5();
    int server = pid != 0;
    struct libxenvchan *c = open_side(server, ring);
    if (!c)
        exit(1);
    char msg[64] = {0};
    double *rtt = calloc((size_t)count, sizeof(double));
    for (int i = -100; i < count; i++) {
        if (server) {
            double t0 = now();
            write_all(c, msg, 64);
            read_all(c, msg, 64);
            if (i >= 0)
                rtt[i] = now() - t0;
        } else {
            read_all(c, msg, 64);
            write_all(c, msg, 64);
        }
    }
    libxenvchan_close(c);
    if (!server)
        _exit(0);
    waitpid(pid, NULL, 0);
    qsort(rtt, (size_t)count, sizeof(double), cmp_double);
    printf("{\"bench\":\"vchan-c-latency\",\"ring\":%zu,\"count\":%d,\"p50us\":%.2f,\"p99us\":%.2f}\n", ring, count,
           rtt[count / 2] * 1e6, rtt[count * 99 / 100] * 1e6);
    free(rtt);
}

static void pipe_throughput(size_t wsize, uint64_t bytes)
{
    int p[2];
    if (pipe(p) < 0)
        exit(1);
    char *buf = malloc(wsize > 65536 ? wsize : 65536);
    memset(buf, 0xab, wsize);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[1]);
        uint64_t got = 0;
        while (got < bytes) {
            ssize_t r = read(p[0], buf, 65536);
            if (r <= 0)
                _exit(2);
            got += (uint64_t)r;
        }
        _exit(0);
    }
    close(p[0]);
    double t0 = now(), c0 = cpu_self();
    for (uint64_t done = 0; done < bytes; done += wsize) {
        size_t off = 0;
        while (off < wsize) {
            ssize_t w = write(p[1], buf + off, wsize - off);
            if (w <= 0)
                exit(3);
            off += (size_t)w;
        }
    }
    close(p[1]);
    waitpid(pid, NULL, 0);
    double dt = now() - t0, cpu = cpu_self() - c0;
    printf(
        "{\"bench\":\"pipe\",\"write\":%zu,\"bytes\":%llu,\"seconds\":%.6f,\"MBps\":%.1f,\"senderCpuSeconds\":%.4f}\n",
        wsize, (unsigned long long)bytes, dt, bytes / dt / 1e6, cpu);
    free(buf);
}

static void pipe_latency(int count)
{
    int a[2], b[2];
    if (pipe(a) < 0 || pipe(b) < 0)
        exit(1);
    char msg[64] = {0};
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = -100; i < count; i++) {
            if (read(a[0], msg, 64) != 64 || write(b[1], msg, 64) != 64)
                _exit(1);
        }
        _exit(0);
    }
    double *rtt = calloc((size_t)count, sizeof(double));
    for (int i = -100; i < count; i++) {
        double t0 = now();
        if (write(a[1], msg, 64) != 64 || read(b[0], msg, 64) != 64)
            exit(2);
        if (i >= 0)
            rtt[i] = now() - t0;
    }
    waitpid(pid, NULL, 0);
    qsort(rtt, (size_t)count, sizeof(double), cmp_double);
    printf("{\"bench\":\"pipe-latency\",\"count\":%d,\"p50us\":%.2f,\"p99us\":%.2f}\n", count, rtt[count / 2] * 1e6,
           rtt[count * 99 / 100] * 1e6);
    free(rtt);
}

static void evtchn_rtt(int count)
{
    /* The vchan handshake only: both sides bounce an event through the channel, no data. */
    setenv("XEN_MOCK_DOMID", "0", 1);
    pid_t pid = fork_domain5();
    int server = pid != 0;
    struct libxenvchan *c = open_side(server, 1024);
    if (!c)
        exit(1);
    xenevtchn_handle *e = c->event;
    uint32_t port = c->event_port;
    double *rtt = calloc((size_t)count, sizeof(double));
    for (int i = -100; i < count; i++) {
        if (server) {
            double t0 = now();
            xenevtchn_notify(e, port);
            int p = xenevtchn_pending(e);
            xenevtchn_unmask(e, (uint32_t)p);
            if (i >= 0)
                rtt[i] = now() - t0;
        } else {
            int p = xenevtchn_pending(e);
            xenevtchn_unmask(e, (uint32_t)p);
            xenevtchn_notify(e, port);
        }
    }
    if (server)
        usleep(10000);
    libxenvchan_close(c);
    if (!server)
        _exit(0);
    waitpid(pid, NULL, 0);
    qsort(rtt, (size_t)count, sizeof(double), cmp_double);
    printf("{\"bench\":\"evtchn-latency\",\"count\":%d,\"p50us\":%.2f,\"p99us\":%.2f}\n", count, rtt[count / 2] * 1e6,
           rtt[count * 99 / 100] * 1e6);
    free(rtt);
}

static void memcpy_bw(uint64_t bytes)
{
    size_t n = 64 << 20;
    char *a = malloc(n), *b = malloc(n);
    memset(a, 1, n);
    memset(b, 2, n);
    double t0 = now();
    uint64_t done = 0;
    for (int i = 0; done < bytes; i++, done += n)
        memcpy(i & 1 ? a : b, i & 1 ? b : a, n);
    double dt = now() - t0;
    printf("{\"bench\":\"memcpy\",\"bytes\":%llu,\"seconds\":%.6f,\"MBps\":%.1f}\n", (unsigned long long)done, dt,
           done / dt / 1e6);
    free(a);
    free(b);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    bench_id = (int)getpid();
    if (argc >= 5 && !strcmp(argv[1], "throughput"))
        vchan_throughput(strtoul(argv[2], 0, 0), strtoul(argv[3], 0, 0), strtoull(argv[4], 0, 0));
    else if (argc >= 4 && !strcmp(argv[1], "latency"))
        vchan_latency(strtoul(argv[2], 0, 0), atoi(argv[3]));
    else if (argc >= 3 && !strcmp(argv[1], "evtchn"))
        evtchn_rtt(atoi(argv[2]));
    else if (argc >= 4 && !strcmp(argv[1], "pipe-throughput"))
        pipe_throughput(strtoul(argv[2], 0, 0), strtoull(argv[3], 0, 0));
    else if (argc >= 3 && !strcmp(argv[1], "pipe-latency"))
        pipe_latency(atoi(argv[2]));
    else if (argc >= 3 && !strcmp(argv[1], "memcpy"))
        memcpy_bw(strtoull(argv[2], 0, 0));
    else {
        fprintf(stderr, "usage: see the comment at the top of bench/native/vchan_bench.c\n");
        return 2;
    }
    return 0;
}
