/*
 * Grant mappings asked again while they fail with EINTR: the one home of that rule, for native/vchan
 * (C) and the addon's grant mapper (src/gnttab.cc).
 *
 * gntdev in a PV domain registers a process's MMU notifier at its first mapping and gives up with
 * EINTR when a signal is pending then (a profiler's SIGPROF, a child's SIGCHLD: seen on the rig under
 * `node --cpu-prof`); libxengnttab has undone its half of the mapping, so asking again is safe.
 * Bounded: a storm of signals still ends in the error.
 */
#ifndef XV_RETRY_H
#define XV_RETRY_H

#include <errno.h>

#define XV_MAP_TRIES 100

/* EXPR, a grant mapping (NULL and errno on failure), evaluated again while it fails with EINTR, at
 * most XV_MAP_TRIES times in all; the mapping, or NULL with errno. (A GNU statement expression:
 * gcc and clang, in C and C++.) */
#define XV_MAP_RETRYING(expr)                                                                                          \
    ({                                                                                                                 \
        void *xv_m_;                                                                                                   \
        int xv_t_ = 0;                                                                                                 \
        do                                                                                                             \
            xv_m_ = (void *)(expr);                                                                                    \
        while (!xv_m_ && errno == EINTR && ++xv_t_ < XV_MAP_TRIES);                                                    \
        xv_m_;                                                                                                         \
    })

#endif
