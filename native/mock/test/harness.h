/* Minimal test harness: CHECK records a failure and carries on; each test
 * binary ends with the "N passed, N failed" line that CI reads. */
#ifndef XENMOCK_HARNESS_H
#define XENMOCK_HARNESS_H

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int h_passed, h_failed;
static const char *h_test = "";

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            h_passed++;                                                                                                \
        } else {                                                                                                       \
            h_failed++;                                                                                                \
            fprintf(stderr, "FAIL [%s] %s:%d: %s (errno %d: %s)\n", h_test, __FILE__, __LINE__, #cond, errno,          \
                    strerror(errno));                                                                                  \
        }                                                                                                              \
    } while (0)

#define CHECK_ERR(expr, e)                                                                                             \
    do {                                                                                                               \
        errno = 0;                                                                                                     \
        long h_rc_ = (long)(expr);                                                                                     \
        int h_e_ = errno;                                                                                              \
        if (h_rc_ < 0 && h_e_ == (e)) {                                                                                \
            h_passed++;                                                                                                \
        } else {                                                                                                       \
            h_failed++;                                                                                                \
            fprintf(stderr, "FAIL [%s] %s:%d: %s: expected -1/%s, got %ld/%s\n", h_test, __FILE__, __LINE__, #expr,    \
                    strerror(e), h_rc_, strerror(h_e_));                                                               \
        }                                                                                                              \
    } while (0)

#define TEST(name) for (int h_once_ = (h_test = (name), fprintf(stderr, "- %s\n", name), 1); h_once_; h_once_ = 0)

static inline double h_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline int h_finish(const char *suite)
{
    printf("%s: %d passed, %d failed\n", suite, h_passed, h_failed);
    return h_failed ? 1 : 0;
}

#endif
