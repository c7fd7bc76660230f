#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

tu_rng tu_rng_fresh(void) {
    static uint64_t base;
    static int printed;
    if (!printed) {
        const char *e = getenv("MXM_TEST_SEED");
        if (e) {
            base = strtoull(e, NULL, 0);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            base = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec;
        }
        fprintf(stderr, "[seed] MXM_TEST_SEED=%llu\n", (unsigned long long)base);
        printed = 1;
    }
    tu_rng r = {base};
    base = splitmix(&base);
    return r;
}

uint64_t tu_next(tu_rng *r) { return splitmix(&r->s); }
double tu_uniform(tu_rng *r) { return (double)(tu_next(r) >> 11) * 0x1.0p-53; }
double tu_normal(tu_rng *r) {
    double u1 = tu_uniform(r), u2 = tu_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
int64_t tu_randint(tu_rng *r, int64_t lo, int64_t hi) {
    return lo + (int64_t)(tu_next(r) % (uint64_t)(hi - lo + 1));
}

void tu_fill_normal_f32(tu_rng *r, float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(tu_normal(r) * scale);
}

void tu_fill_blockscaled_f32(tu_rng *r, float *x, int64_t n, int lo, int hi) {
    for (int64_t b = 0; b < n; b += 32) {
        const double f = ldexp(1.0, (int)tu_randint(r, -lo, hi));
        for (int64_t i = b; i < b + 32 && i < n; i++) x[i] = (float)(tu_normal(r) * f);
    }
}

void tu_poison_f32(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = NAN;
}
void tu_poison_u8(uint8_t *x, int64_t n) { memset(x, 0xA5, (size_t)n); }

double tu_rel_l2_f32(const float *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i])) return INFINITY;
        if (isnan(b[i])) continue;
        const double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

const char *tu_src_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("MXM_SOURCE_DIR");
#ifdef MXM_SOURCE_DIR
    if (!root) root = MXM_SOURCE_DIR;
#endif
    if (!root) root = ".";
    snprintf(buf, sizeof buf, "%s/%s", root, rel);
    return buf;
}

void *tu_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

void tu_rm_tree(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)) != NULL) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
                char sub[4096];
                snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
                tu_rm_tree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}
