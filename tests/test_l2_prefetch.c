/* The piece arithmetic of the CUDA decode prologue's L2 prefetch (src/cuda/l2_prefetch.h), on the
 * host: a group's pieces, taken in order, cover exactly the first min(limit, total) bytes of its
 * segments' concatenation, each inside its segment and at most MXM_PF_PIECE long, no more of them
 * than mxm_pf_pieces_bound; the aligned part of a range is the largest 16-byte-aligned one inside
 * it. Fresh random segment lengths and limits (empty segments, lengths around the piece size,
 * limits past the total). No GPU needed. */
#include <stdio.h>
#include <stdlib.h>

#include "cuda/l2_prefetch.h"
#include "testutil.h"

static int64_t random_len(tu_rng *r) {
    switch (tu_randint(r, 0, 5)) {
    case 0: return 0;
    case 1: return tu_randint(r, 1, 64);
    case 2: return MXM_PF_PIECE + tu_randint(r, -2, 2);
    case 3: return tu_randint(r, 1, 4) * MXM_PF_PIECE;
    default: return tu_randint(r, 1, 3 << 22);
    }
}

static void test_pieces_cover_the_share(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    int64_t partial = 0, pieces_seen = 0;
    for (int c = 0; c < 20000; c++) {
        int64_t len[MXM_PF_SEGS], start[MXM_PF_SEGS], total = 0;
        for (int s = 0; s < MXM_PF_SEGS; s++) start[s] = total, len[s] = random_len(&r), total += len[s];
        const int64_t limit = tu_randint(&r, 0, 3) == 0 ? total + tu_randint(&r, 0, 1 << 20) : tu_randint(&r, 0, total);
        const int64_t want = limit < total ? limit : total;
        int64_t cursor = 0, j = 0, off = -1, n = -1;
        int s, last_seg = 0;
        while ((s = mxm_pf_piece(len, limit, j, &off, &n)) >= 0) {
            assert_true(s >= last_seg); /* segment by segment */
            assert_true(n > 0 && n <= MXM_PF_PIECE);
            assert_true(off >= 0 && off + n <= len[s]);
            assert_int_equal(start[s] + off, cursor); /* no gap, no overlap */
            cursor += n, last_seg = s, j++;
        }
        assert_int_equal(cursor, want);
        assert_true(j <= mxm_pf_pieces_bound(limit));
        for (int64_t k = j; k < j + 3; k++) assert_int_equal(mxm_pf_piece(len, limit, k, &off, &n), -1);
        partial += want < total, pieces_seen += j;
    }
    printf("pieces: %lld over 20000 groups, %lld of them cut by their share\n", (long long)pieces_seen,
           (long long)partial);
    assert_true(partial > 1000);
}

static void test_aligned_part(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    for (int c = 0; c < 100000; c++) {
        const uintptr_t p = (uintptr_t)tu_randint(&r, 0, 1 << 20) * (tu_randint(&r, 0, 1) ? 16 : 1);
        const int64_t off = tu_randint(&r, 0, 4096), n = tu_randint(&r, 0, 1) ? tu_randint(&r, 0, 40) : tu_randint(&r, 0, 1 << 17);
        uintptr_t at = 0;
        const uint32_t bytes = mxm_pf_aligned(p, off, n, &at);
        const uintptr_t b = p + (uintptr_t)off, e = b + (uintptr_t)n;
        if (!bytes) { /* no 16-byte-aligned 16-byte block inside [b, e) */
            assert_true(((b + 15) & ~(uintptr_t)15) + 16 > e);
            continue;
        }
        assert_int_equal(at % 16, 0);
        assert_int_equal(bytes % 16, 0);
        assert_true(at >= b && at + bytes <= e);
        assert_true(at - b < 16 && e - (at + bytes) < 16); /* the largest such part */
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces_cover_the_share),
        cmocka_unit_test(test_aligned_part),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
