/* Shared test helpers: fresh random inputs (seed printed so a failure can be replayed with
 * MXM_TEST_SEED), poisoning, error norms, and data paths. */
#ifndef MXM_TESTUTIL_H
#define MXM_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the three headers above first. */
#include <cmocka.h>

typedef struct tu_rng {
    uint64_t s;
} tu_rng;

/* A generator seeded from MXM_TEST_SEED or the clock; prints the seed once per process. */
tu_rng tu_rng_fresh(void);
uint64_t tu_next(tu_rng *r);
double tu_uniform(tu_rng *r);           /* [0, 1) */
double tu_normal(tu_rng *r);            /* N(0, 1) */
int64_t tu_randint(tu_rng *r, int64_t lo, int64_t hi); /* [lo, hi] */

void tu_fill_normal_f32(tu_rng *r, float *x, int64_t n, float scale);
/* Normal values with a random power-of-two factor per 32-block in [2^-lo, 2^hi]: realistic
 * spread of MXFP8 block scales. */
void tu_fill_blockscaled_f32(tu_rng *r, float *x, int64_t n, int lo, int hi);
void tu_poison_f32(float *x, int64_t n);  /* NaN */
void tu_poison_u8(uint8_t *x, int64_t n); /* 0xA5 */

/* ||a - b|| / ||b|| in double; +inf if any NaN in a. */
double tu_rel_l2_f32(const float *a, const double *b, int64_t n);

/* Path of a file under the source tree (tests/data/...). Static buffer. */
const char *tu_src_path(const char *rel);

/* Removes a file or a directory tree (no error if absent). */
void tu_rm_tree(const char *path);

/* Allocation that fails the test on NULL. */
void *tu_alloc(size_t n);

#endif
