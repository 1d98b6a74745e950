/*
 * A pcid v4 client in C, built against Xen's own libxenvchan, speaking byte-exact v4 messages to
 * prove our server's framing (test/pcid.test.ts):
 *   pcid_v4_client DOMID PATH SBDF_ASSIGNED SBDF_IRQ
 * Connects to the channel the server offers at PATH (the node made for it), then writes
 *   1. two requests in one write,
 *   2. one request one byte per write,
 *   3. a request that does not parse, and a request in v1's form (no "cmd"),
 * and prints every reply line as it came (without its \r\n), then exits 0 after the five replies.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxenvchan.h>

static int die(const char *what)
{
    fprintf(stderr, "pcid_v4_client: %s: %s\n", what, strerror(errno));
    return 1;
}

static int put(struct libxenvchan *c, const char *s, size_t n)
{
    while (n) {
        int w = libxenvchan_write(c, s, n);
        if (w < 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: pcid_v4_client DOMID PATH SBDF_ASSIGNED SBDF_IRQ\n");
        return 2;
    }
    struct libxenvchan *c = libxenvchan_client_init(NULL, atoi(argv[1]), argv[2]);
    if (!c)
        return die("libxenvchan_client_init");
    c->blocking = 1;

    char two[512], one[256];
    snprintf(two, sizeof(two), "{\"cmd\":\"is_device_assigned\",\"sbdf\":\"%s\"}\r\n{\"cmd\":\"list_assignable\"}\r\n",
             argv[3]);
    snprintf(one, sizeof(one), "{\"cmd\":\"resource_list\",\"sbdf\":\"%s\",\"domid\":1}\r\n", argv[4]);
    const char *bad = "{\"cmd\":\"list_ass\r\n{\"execute\":\"ls\",\"id\":0,\"arguments\":{}}\r\n";

    if (put(c, two, strlen(two)))
        return die("write");
    struct timespec ms = {0, 1000000};
    for (size_t i = 0; one[i]; i++) {
        if (put(c, one + i, 1))
            return die("write");
        nanosleep(&ms, NULL);
    }
    if (put(c, bad, strlen(bad)))
        return die("write");

    static char buf[65536];
    size_t used = 0;
    int lines = 0;
    while (lines < 5) {
        int r = libxenvchan_read(c, buf + used, sizeof(buf) - used - 1);
        if (r <= 0)
            return die("read");
        used += (size_t)r;
        char *start = buf, *eol;
        while ((eol = memmem(start, used - (size_t)(start - buf), "\r\n", 2))) {
            printf("%.*s\n", (int)(eol - start), start);
            lines++;
            start = eol + 2;
        }
        used -= (size_t)(start - buf);
        memmove(buf, start, used);
    }
    fflush(stdout);
    libxenvchan_close(c);
    return 0;
}
