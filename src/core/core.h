/* Internal core: error reporting, logging, checked size arithmetic, assertions.
 * Depends on nothing but the public header and libc. */
#ifndef MXM_CORE_H
#define MXM_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "mxmoe.h"

#if defined(__GNUC__)
#define MXM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MXM_PRINTF(a, b)
#endif

/* Records a formatted message as the calling thread's last error and returns st, so that
 * failures read `return mxm_fail(MXM_ERR_SHAPE, "H=%d is not a multiple of 32", h);`. */
mxm_status mxm_fail(mxm_status st, const char *fmt, ...) MXM_PRINTF(2, 3);

/* Prefixes the thread's last error with context ("loading foo: <old message>"). Returns st. */
mxm_status mxm_fail_context(mxm_status st, const char *fmt, ...) MXM_PRINTF(2, 3);

void mxm_log(int32_t level, const char *fmt, ...) MXM_PRINTF(2, 3);

/* Broken internal invariants (never untrusted input): print file:line and abort. */
void mxm_assert_fail(const char *expr, const char *file, int line);
#define MXM_ASSERT(e) ((e) ? (void)0 : mxm_assert_fail(#e, __FILE__, __LINE__))

/* Checked int64 arithmetic: return false on overflow (or negative operands for mul). */
static inline bool mxm_mul_i64(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0) return false;
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool mxm_add_i64(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
/* a*b*c with overflow check; returns -1 on overflow. */
static inline int64_t mxm_mul3_i64(int64_t a, int64_t b, int64_t c) {
    int64_t t = 0, r = 0;
    if (!mxm_mul_i64(a, b, &t) || !mxm_mul_i64(t, c, &r)) return -1;
    return r;
}

static inline int64_t mxm_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t mxm_align_up(int64_t a, int64_t b) { return mxm_ceil_div(a, b) * b; }

/* Number of threads to use for a request of n (0 = all available). */
int32_t mxm_threads(int32_t requested);

/* Returns true when the environment forces reference kernels (MXM_KERNELS=ref). */
bool mxm_env_forces_ref(void);

#endif
