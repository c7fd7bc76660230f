#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

const char *mxm_version(void) { return "0.1.0"; }

const char *mxm_status_str(int32_t status) {
    switch (status) {
#define MXM_STATUS_CASE_(name, value, msg) \
    case value:                            \
        return msg;
        MXM_STATUS_LIST(MXM_STATUS_CASE_)
#undef MXM_STATUS_CASE_
    default:
        return "unknown status";
    }
}

static _Thread_local char last_error[1024];

const char *mxm_last_error(void) { return last_error; }

mxm_status mxm_fail(mxm_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    mxm_log(MXM_LOG_DEBUG, "%s: %s", mxm_status_str(st), last_error);
    return st;
}

mxm_status mxm_fail_context(mxm_status st, const char *fmt, ...) {
    char prefix[512], old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    const size_t n = strlen(prefix);
    memcpy(last_error, prefix, n + 1 < sizeof last_error ? n + 1 : sizeof last_error);
    if (n + 2 < sizeof last_error) {
        memcpy(last_error + n, ": ", 3);
        strncat(last_error, old, sizeof last_error - n - 3);
    }
    return st;
}

static mxm_log_fn log_fn;
static void *log_user;
static int32_t log_max_level = MXM_LOG_INFO;

void mxm_set_log_callback(mxm_log_fn fn, void *user, int32_t max_level) {
    log_fn = fn;
    log_user = user;
    log_max_level = max_level;
}

void mxm_log(int32_t level, const char *fmt, ...) {
    if (!log_fn || level > log_max_level) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_user);
}

void mxm_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "mxmoe: internal assertion failed: %s at %s:%d\n", expr, file, line);
    abort();
}

int32_t mxm_threads(int32_t requested) {
    if (requested > 0) return requested;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

bool mxm_env_forces_ref(void) {
    const char *k = getenv("MXM_KERNELS");
    return k && strcmp(k, "ref") == 0;
}
