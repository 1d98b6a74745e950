/*
 * xenmockd: the mock hypervisor and xenstore daemon.
 *
 *   xenmockd serve [--daemon] [--dir=DIR]   run the broker (clients start it by themselves)
 *   xenmockd status [--json]                per-domain counts of live resources
 *   xenmockd reset | shutdown
 *   xenmockd static DOM:PORT DOM:PORT       pre-bind a static event channel pair
 *   xenmockd virq DOM VIRQ                  raise a virtual interrupt
 *   xenmockd introduce DOMID...             create domains' xenstore entries, as a toolstack does
 *   xenmockd destroy DOMID                  what `xl destroy` does (xenmock_destroy_domain)
 *
 * One process, one epoll loop, no threads. Each client handle is a
 * SOCK_SEQPACKET connection; when it closes (however its process ended) the
 * broker releases what the handle held, performing unmap notifications first,
 * exactly as Linux's gntalloc/gntdev do when a process dies.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "../include/xenmock.h"

/* The CLI: `serve` runs the broker (serve.c); every other command is a client of a running one,
 * through libxenmock, as any program is. */

static int print_status(bool json)
{
    struct xenmock_stats st[1024];
    int n = xenmock_stats(XENMOCK_ALL_DOMAINS, st, 1024);
    if (n < 0) {
        perror("xenmockd: status");
        return 1;
    }
    if (json) {
        printf("{\"dir\":\"%s\",\"running\":%s,\"domains\":[", xenmock_dir(), n > 0 ? "true" : "false");
        for (int i = 0; i < n; i++)
            printf("%s{\"domid\":%u,\"connections\":%u,\"grants\":%u,\"mappedPages\":%u,\"ports\":%u,"
                   "\"watches\":%u,\"nodes\":%u,\"transactions\":%u}",
                   i ? "," : "", st[i].domid, st[i].connections, st[i].grants, st[i].mapped_pages, st[i].ports,
                   st[i].watches, st[i].nodes, st[i].transactions);
        printf("]}\n");
        return 0;
    }
    if (n == 0) {
        printf("mock hypervisor in %s: not running\n", xenmock_dir());
        return 0;
    }
    printf("mock hypervisor in %s\n%6s %8s %7s %7s %6s %8s %6s %5s\n", xenmock_dir(), "domid", "handles", "grants",
           "mapped", "ports", "watches", "nodes", "txns");
    for (int i = 0; i < n; i++)
        printf("%6u %8u %7u %7u %6u %8u %6u %5u\n", st[i].domid, st[i].connections, st[i].grants, st[i].mapped_pages,
               st[i].ports, st[i].watches, st[i].nodes, st[i].transactions);
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: xenmockd serve [--daemon] [--dir=DIR] | status [--json] | reset | shutdown |\n"
                    "       static DOM:PORT DOM:PORT | virq DOM VIRQ | introduce DOMID... | destroy DOMID\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve")) {
        bool daemonize = false;
        const char *dir = NULL;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--daemon"))
                daemonize = true;
            else if (!strncmp(argv[i], "--dir=", 6))
                dir = argv[i] + 6;
            else
                return usage();
        }
        if (dir)
            setenv("XEN_MOCK_DIR", dir, 1);
        return serve(xenmock_dir(), daemonize);
    }
    if (!strcmp(cmd, "dir")) {
        printf("%s\n", xenmock_dir());
        return 0;
    }
    if (!strcmp(cmd, "status"))
        return print_status(argc > 2 && !strcmp(argv[2], "--json"));
    if (!strcmp(cmd, "reset")) {
        if (xenmock_reset() < 0) {
            perror("xenmockd: reset");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "shutdown")) {
        if (xenmock_shutdown() < 0) {
            perror("xenmockd: shutdown");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "static") && argc == 4) {
        unsigned d, p, rd, rp;
        if (sscanf(argv[2], "%u:%u", &d, &p) != 2 || sscanf(argv[3], "%u:%u", &rd, &rp) != 2)
            return usage();
        if (xenmock_static_evtchn_add(d, p, rd, rp) < 0) {
            perror("xenmockd: static");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "introduce") && argc >= 3) {
        for (int i = 2; i < argc; i++) {
            if (xenmock_introduce_domain((uint32_t)strtoul(argv[i], NULL, 10)) < 0) {
                perror("xenmockd: introduce");
                return 1;
            }
        }
        return 0;
    }
    if (!strcmp(cmd, "destroy") && argc == 3) {
        if (xenmock_destroy_domain((uint32_t)strtoul(argv[2], NULL, 10)) < 0) {
            perror("xenmockd: destroy");
            return 1;
        }
        return 0;
    }
    if (!strcmp(cmd, "virq") && argc == 4) {
        if (xenmock_raise_virq((uint32_t)strtoul(argv[2], NULL, 10), (uint32_t)strtoul(argv[3], NULL, 10)) < 0) {
            perror("xenmockd: virq");
            return 1;
        }
        return 0;
    }
    return usage();
}
