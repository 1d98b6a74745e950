/*
 * vchan across processes and domains: a server in domain 0 and a client in
 * domain 5, each its own process, over the mock. The vchan library of each
 * side is loaded with dlopen, so the same run pairs our libxenvchan with
 * Debian's (both directions) where libxen-dev is installed.
 *
 *   test_vchan                      run every case
 *   test_vchan server LIB PEER PATH READ_MIN WRITE_MIN BYTES
 *   test_vchan client LIB PEER PATH BYTES
 *   test_vchan hold-server|hold-client LIB PEER PATH    stream until killed or the peer dies
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libxenvchan.h>
#include <xenmock.h>
#include <xenstore.h>

#include "harness.h"

#define REAL_LIB "/usr/lib/x86_64-linux-gnu/libxenvchan.so.4.17"

struct api {
    struct libxenvchan *(*server_init)(void *, int, const char *, size_t, size_t);
    struct libxenvchan *(*client_init)(void *, int, const char *);
    void (*close)(struct libxenvchan *);
    int (*read)(struct libxenvchan *, void *, size_t);
    int (*write)(struct libxenvchan *, const void *, size_t);
    int (*wait)(struct libxenvchan *);
    int (*fd)(struct libxenvchan *);
    int (*is_open)(struct libxenvchan *);
    int (*data_ready)(struct libxenvchan *);
    int (*buffer_space)(struct libxenvchan *);
};

static struct api load(const char *path)
{
    struct api a;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
#define SYM(f, n) *(void **)&a.f = dlsym(h, "libxenvchan_" n)
    SYM(server_init, "server_init");
    SYM(client_init, "client_init");
    SYM(close, "close");
    SYM(read, "read");
    SYM(write, "write");
    SYM(wait, "wait");
    SYM(fd, "fd_for_select");
    SYM(is_open, "is_open");
    SYM(data_ready, "data_ready");
    SYM(buffer_space, "buffer_space");
    return a;
}

/* A reproducible byte stream per direction. */
struct gen {
    uint64_t s;
};
static uint8_t gen_byte(struct gen *g)
{
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return (uint8_t)g->s;
}

static int wait_event(struct api *a, struct libxenvchan *c, int ms)
{
    struct pollfd p = {.fd = a->fd(c), .events = POLLIN};
    int n = poll(&p, 1, ms);
    if (n == 1)
        return a->wait(c);
    return 0;
}

/* Sends BYTES from stream OUT while receiving and checking BYTES of stream IN, in random chunk sizes. */
static int transfer(struct api *a, struct libxenvchan *c, uint64_t bytes, uint64_t out_seed, uint64_t in_seed)
{
    static uint8_t wbuf[1 << 20], rbuf[1 << 20];
    struct gen out = {out_seed}, in = {in_seed}, chunk = {out_seed * 31 + 7};
    uint64_t sent = 0, recvd = 0;
    size_t pending = 0; /* bytes of wbuf generated but not yet accepted */
    double deadline = h_now() + 60;
    while (sent < bytes || recvd < bytes) {
        int progress = 0;
        if (sent < bytes) {
            if (!pending) {
                size_t want = 1 + (gen_byte(&chunk) | gen_byte(&chunk) << 8 | (size_t)gen_byte(&chunk) << 16) % 200000;
                if (want > bytes - sent)
                    want = (size_t)(bytes - sent);
                for (size_t i = 0; i < want; i++)
                    wbuf[i] = gen_byte(&out);
                pending = want;
            }
            int n = a->write(c, wbuf, pending);
            if (n < 0) {
                perror("vchan write");
                return -1;
            }
            if (n > 0) {
                memmove(wbuf, wbuf + n, pending - (size_t)n);
                pending -= (size_t)n;
                sent += (uint64_t)n;
                progress = 1;
            }
        }
        if (recvd < bytes) {
            size_t want = 1 + gen_byte(&chunk) * 1024u + gen_byte(&chunk);
            int n = a->read(c, rbuf, want);
            if (n < 0) {
                perror("vchan read");
                return -1;
            }
            for (int i = 0; i < n; i++) {
                if (rbuf[i] != gen_byte(&in)) {
                    fprintf(stderr, "data mismatch at byte %llu\n", (unsigned long long)(recvd + (uint64_t)i));
                    return -1;
                }
            }
            recvd += (uint64_t)n;
            progress |= n > 0;
        }
        if (!progress) {
            if (h_now() > deadline) {
                fprintf(stderr, "transfer stalled: sent %llu received %llu\n", (unsigned long long)sent,
                        (unsigned long long)recvd);
                return -1;
            }
            /* Arm both notifications, then sleep until an event. */
            a->data_ready(c);
            a->buffer_space(c);
            wait_event(a, c, 200);
        }
    }
    return 0;
}

static int role_server(const char *lib, int peer, const char *path, size_t rmin, size_t wmin, uint64_t bytes)
{
    struct api a = load(lib);
    struct libxenvchan *c = a.server_init(NULL, peer, path, rmin, wmin);
    if (!c) {
        perror("server_init");
        return 10;
    }
    c->blocking = 0;
    double deadline = h_now() + 20;
    while (a.is_open(c) == 2 && h_now() < deadline)
        wait_event(&a, c, 200);
    if (a.is_open(c) != 1)
        return 11;
    /* Fill the ring completely while the client waits, to check a full ring. */
    static uint8_t buf[1 << 21];
    struct gen g = {99};
    size_t ring = (size_t)1 << c->write.order;
    for (size_t i = 0; i < ring * 2; i++)
        buf[i] = gen_byte(&g);
    /* Offered twice the ring, the write must take exactly one ring: prod - cons == size. (The
     * client, waiting for data_ready() == size, checks the full state from its side; buffer_space()
     * here would race with it draining the ring.) */
    int n = a.write(c, buf, ring * 2);
    if (n != (int)ring) {
        fprintf(stderr, "full ring: wrote %d of a %zu-byte ring\n", n, ring);
        return 12;
    }
    if (transfer(&a, c, bytes, 1, 2) < 0)
        return 13;
    /* Wait for the client to go, then the channel must report closed. */
    deadline = h_now() + 10;
    while (a.is_open(c) == 1 && h_now() < deadline)
        wait_event(&a, c, 200);
    int open = a.is_open(c);
    char b;
    int r = a.read(c, &b, 1);
    a.close(c);
    return open == 0 && r < 0 ? 0 : 14;
}

static int role_client(const char *lib, int peer, const char *path, uint64_t bytes)
{
    struct api a = load(lib);
    struct libxenvchan *c = NULL;
    for (int i = 0; i < 200 && !c; i++) {
        c = a.client_init(NULL, peer, path);
        if (!c)
            usleep(20000);
    }
    if (!c) {
        perror("client_init");
        return 20;
    }
    c->blocking = 0;
    size_t ring = (size_t)1 << c->read.order;
    double deadline = h_now() + 20;
    while ((size_t)a.data_ready(c) < ring && h_now() < deadline)
        wait_event(&a, c, 200);
    if ((size_t)a.data_ready(c) != ring) {
        fprintf(stderr, "full ring: %d of %zu bytes ready\n", a.data_ready(c), ring);
        return 21;
    }
    static uint8_t buf[1 << 21];
    struct gen g = {99};
    size_t got = 0;
    while (got < ring) {
        int n = a.read(c, buf + got, ring - got);
        if (n <= 0)
            return 22;
        got += (size_t)n;
    }
    for (size_t i = 0; i < ring; i++)
        if (buf[i] != gen_byte(&g))
            return 23;
    if (transfer(&a, c, bytes, 2, 1) < 0)
        return 24;
    a.close(c);
    return 0;
}

/* Streams until the peer dies; exits 0 once is_open() reports the death. */
static int role_hold(int server, const char *lib, int peer, const char *path)
{
    struct api a = load(lib);
    struct libxenvchan *c = NULL;
    if (server) {
        c = a.server_init(NULL, peer, path, 65536, 65536);
    } else {
        for (int i = 0; i < 200 && !c; i++) {
            c = a.client_init(NULL, peer, path);
            if (!c)
                usleep(20000);
        }
    }
    if (!c)
        return 30;
    c->blocking = 0;
    static uint8_t buf[65536];
    int was_open = 0;
    double deadline = h_now() + 30;
    while (h_now() < deadline) {
        int st = a.is_open(c);
        if (st == 1 && !was_open) {
            was_open = 1;
            printf("connected\n");
            fflush(stdout);
        }
        if (was_open && st == 0) {
            printf("closed\n");
            fflush(stdout);
            a.close(c);
            return 0;
        }
        if (st == 1) {
            a.write(c, buf, sizeof(buf));
            a.read(c, buf, sizeof(buf));
        }
        a.data_ready(c);
        a.buffer_space(c);
        wait_event(&a, c, 50);
    }
    return 31;
}

/* ---- orchestration ---- */

static char self_path[PATH_MAX];
static char mock_dir[PATH_MAX];
static char mock_lib[PATH_MAX + 32];

static pid_t spawn(int domid, char *const argv[], int *out_fd)
{
    int p[2] = {-1, -1};
    if (out_fd && pipe(p) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char d[16];
        snprintf(d, sizeof(d), "%d", domid);
        setenv("XEN_MOCK_DOMID", d, 1);
        /* What `xen-vchan mock env` exports: Debian's libxenvchan then finds the mock's libraries. */
        setenv("LD_LIBRARY_PATH", mock_dir, 1);
        if (out_fd) {
            dup2(p[1], 1);
            close(p[0]);
            close(p[1]);
        }
        execv(self_path, argv);
        _exit(127);
    }
    if (out_fd) {
        close(p[1]);
        *out_fd = p[0];
    }
    return pid;
}

static int wait_exit(pid_t pid, double timeout)
{
    double end = h_now() + timeout;
    int status;
    while (h_now() < end) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(2000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static int read_line(int fd, char *buf, size_t cap, double timeout)
{
    size_t n = 0;
    double end = h_now() + timeout;
    while (n + 1 < cap && h_now() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) != 1)
            continue;
        if (read(fd, buf + n, 1) != 1)
            break;
        if (buf[n++] == '\n')
            break;
    }
    buf[n] = 0;
    return (int)n;
}

static int path_gone(const char *path)
{
    struct xs_handle *h = xs_open(0);
    unsigned len;
    void *v = xs_read(h, XBT_NULL, path, &len);
    int gone = !v && errno == ENOENT;
    free(v);
    xs_close(h);
    return gone;
}

static void run_pair(const char *slib, const char *clib, size_t rmin, size_t wmin, uint64_t bytes, int idx)
{
    char path[64], rs[32], ws[32], bs[32];
    snprintf(path, sizeof(path), "data/vchan/5/t%d", idx);
    snprintf(rs, sizeof(rs), "%zu", rmin);
    snprintf(ws, sizeof(ws), "%zu", wmin);
    snprintf(bs, sizeof(bs), "%llu", (unsigned long long)bytes);
    char *sargv[] = {"test_vchan", "server", (char *)slib, "5", path, rs, ws, bs, NULL};
    char cpath[96];
    snprintf(cpath, sizeof(cpath), "/local/domain/0/%s", path);
    char *cargv[] = {"test_vchan", "client", (char *)clib, "0", cpath, bs, NULL};
    double t0 = h_now();
    pid_t s = spawn(0, sargv, NULL);
    pid_t c = spawn(5, cargv, NULL);
    int cs = wait_exit(c, 90), ss = wait_exit(s, 30);
    double dt = h_now() - t0;
    fprintf(stderr, "  %s server / %s client, rings %zu/%zu: %.1f MB each way in %.2fs (client %d, server %d)\n",
            strstr(slib, "mock") ? "mock" : "debian", strstr(clib, "mock") ? "mock" : "debian", rmin, wmin, bytes / 1e6,
            dt, cs, ss);
    CHECK(cs == 0);
    CHECK(ss == 0);
    CHECK(path_gone(cpath));
}

static void run_kill(const char *slib, const char *clib, int kill_server)
{
    const char *path = kill_server ? "/local/domain/0/data/vchan/5/ks" : "/local/domain/0/data/vchan/5/kc";
    char *sargv[] = {"test_vchan", "hold-server", (char *)slib, "5", (char *)path, NULL};
    char *cargv[] = {"test_vchan", "hold-client", (char *)clib, "0", (char *)path, NULL};
    int sfd, cfd;
    pid_t s = spawn(0, sargv, &sfd);
    pid_t c = spawn(5, cargv, &cfd);
    char line[64];
    read_line(sfd, line, sizeof(line), 10);
    CHECK(!strcmp(line, "connected\n"));
    read_line(cfd, line, sizeof(line), 10);
    CHECK(!strcmp(line, "connected\n"));
    usleep(200000); /* mid-stream */
    pid_t victim = kill_server ? s : c, survivor = kill_server ? c : s;
    int survivor_fd = kill_server ? cfd : sfd;
    double t0 = h_now();
    kill(victim, SIGKILL);
    read_line(survivor_fd, line, sizeof(line), 5);
    double dt = h_now() - t0;
    fprintf(stderr, "  %s killed (%s server, %s client): survivor saw is_open()==0 after %.0f ms\n",
            kill_server ? "server" : "client", strstr(slib, "mock") ? "mock" : "debian",
            strstr(clib, "mock") ? "mock" : "debian", dt * 1000);
    CHECK(!strcmp(line, "closed\n"));
    CHECK(dt < 1.0);
    /* The killed domain's grants and ports are gone; a killed server's xenstore node stays, stale,
     * whichever libxenvchan made it (as on real Xen). */
    uint32_t dom = kill_server ? 0 : 5;
    struct xenmock_stats st = {0};
    double end = h_now() + 1;
    do {
        memset(&st, 0, sizeof(st));
        xenmock_stats(dom, &st, 1);
    } while ((st.grants || st.mapped_pages || (kill_server ? st.ports : 0)) && h_now() < end && !usleep(5000));
    CHECK(st.grants == 0 && st.mapped_pages == 0);
    if (kill_server) {
        CHECK(st.ports == 0);
        struct xs_handle *h = xs_open(0);
        CHECK(!path_gone(path));
        xs_rm(h, XBT_NULL, path); /* as a toolstack would */
        xs_close(h);
    }
    int rc = wait_exit(survivor, 5);
    waitpid(victim, NULL, 0);
    CHECK(rc == 0);
    close(sfd);
    close(cfd);
}

int main(int argc, char **argv)
{
    alarm(600);
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 7 && !strcmp(argv[1], "server"))
        return role_server(argv[2], atoi(argv[3]), argv[4], strtoul(argv[5], 0, 10), strtoul(argv[6], 0, 10),
                           strtoull(argv[7], 0, 10));
    if (argc >= 6 && !strcmp(argv[1], "client"))
        return role_client(argv[2], atoi(argv[3]), argv[4], strtoull(argv[5], 0, 10));
    if (argc >= 5 && !strncmp(argv[1], "hold-", 5))
        return role_hold(!strcmp(argv[1], "hold-server"), argv[2], atoi(argv[3]), argv[4]);

    if (!realpath("/proc/self/exe", self_path))
        return 2;
    Dl_info info;
    if (!dladdr((void *)&xenmock_stats, &info))
        return 2;
    snprintf(mock_dir, sizeof(mock_dir), "%.*s", (int)(strrchr(info.dli_fname, '/') - info.dli_fname), info.dli_fname);
    snprintf(mock_lib, sizeof(mock_lib), "%s/libxenvchan.so.4.17", mock_dir);
    /* Keep the broker up for the whole run. */
    struct xs_handle *keep = xs_open(0);
    if (!keep)
        return 2;

    static const size_t sizes[][2] = {{1024, 2048},       {2048, 1024},  {4096, 4096},   {65536, 65536},
                                      {1 << 20, 1 << 20}, {1024, 65536}, {1 << 20, 4096}};
    int have_real = access(REAL_LIB, R_OK) == 0;
    const char *libs[2] = {mock_lib, REAL_LIB};
    int idx = 0;
    TEST("vchan dom0 <-> dom5 across processes, every ring size, both directions")
    {
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
            run_pair(mock_lib, mock_lib, sizes[i][0], sizes[i][1], sizes[i][0] >= 65536 ? 8 << 20 : 2 << 20, idx++);
    }
    if (!have_real) {
        printf("SKIP interop with Debian's libxenvchan: %s not found (apt-get install libxen-dev)\n", REAL_LIB);
    } else {
        TEST("interop: Debian's libxenvchan server <-> our client, our server <-> Debian's client")
        {
            for (int pairing = 0; pairing < 3; pairing++) {
                const char *sl = libs[pairing == 0 || pairing == 2], *cl = libs[pairing == 1 || pairing == 2];
                for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
                    run_pair(sl, cl, sizes[i][0], sizes[i][1], 2 << 20, idx++);
            }
        }
    }
    TEST("kill -9 of either side: the survivor sees is_open()==0 within one second, nothing of the dead stays")
    {
        run_kill(mock_lib, mock_lib, 1);
        run_kill(mock_lib, mock_lib, 0);
        if (have_real) {
            run_kill(REAL_LIB, REAL_LIB, 1);
            run_kill(REAL_LIB, mock_lib, 0);
        }
    }
    xs_close(keep);
    return h_finish("test_vchan");
}
