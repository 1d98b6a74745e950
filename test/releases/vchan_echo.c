/*
 * An echo peer built against one Xen release's libxenvchan (its own header and library), for the
 * interop tests of scripts/test-releases.sh:
 *   vchan_echo server DOMID PATH READMIN WRITEMIN    offer a channel to DOMID at PATH, echo one client
 *   vchan_echo client DOMID PATH                     connect to DOMID's channel at PATH, echo
 * Prints "ready" once the channel is offered (server) or connected (client), echoes every byte back
 * until the other end closes, then prints "echoed N" and exits 0. Any failure exits 1 with a reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxenvchan.h>

static int die(const char *what)
{
    fprintf(stderr, "vchan_echo: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    struct libxenvchan *c;
    if (argc == 6 && !strcmp(argv[1], "server"))
        c = libxenvchan_server_init(NULL, atoi(argv[2]), argv[3], strtoul(argv[4], NULL, 0), strtoul(argv[5], NULL, 0));
    else if (argc == 4 && !strcmp(argv[1], "client"))
        c = libxenvchan_client_init(NULL, atoi(argv[2]), argv[3]);
    else {
        fprintf(stderr, "usage: vchan_echo server DOMID PATH READMIN WRITEMIN | client DOMID PATH\n");
        return 2;
    }
    if (!c)
        return die(argv[1]);
    printf("ready\n");
    fflush(stdout);
    c->blocking = 1;
    static char buf[65536];
    unsigned long long total = 0;
    for (;;) {
        /* A server waits here for its client too: read blocks until data or the peer is gone. */
        int n = libxenvchan_read(c, buf, sizeof(buf));
        if (n < 0)
            break; /* closed */
        for (int off = 0; off < n;) {
            int w = libxenvchan_write(c, buf + off, (size_t)(n - off));
            if (w < 0) {
                libxenvchan_close(c);
                return die("libxenvchan_write");
            }
            off += w;
        }
        total += (unsigned long long)n;
    }
    printf("echoed %llu\n", total);
    libxenvchan_close(c);
    return 0;
}
