/* The decode prologue's L2 prefetch (src/cuda/permute.cu): as soon as a step's top-k ids are known,
 * blocks of the prologue ask the L2 for the touched experts' weights, so HBM streams them while
 * the prologue's permutation runs and the GEMMs' own loads find them in flight or in the L2
 * (at T = 1 the GEMM kernels otherwise start streaming only after the prologue and a chain of
 * dependent table loads: about 5 of Qwen3's 30 us on an H100, docs/BENCHMARKS.md session 26).
 * A prefetch is a hint: it changes no result.
 *
 * A group's bytes are four segments in the order the layer reads them: GEMM1's codes and scales,
 * GEMM2's codes and scales. A step with n touched groups gives each the same share of the byte
 * budget, taken from the front of its segments (GEMM1's first), in pieces of at most
 * MXM_PF_PIECE bytes (one bulk prefetch each), numbered segment by segment. Plain C with MXM_HD,
 * so the host tests the piece arithmetic (tests/test_l2_prefetch.c). */
#ifndef MXM_CUDA_L2_PREFETCH_H
#define MXM_CUDA_L2_PREFETCH_H

#include <stdint.h>

#include "formats/formats.h"

#define MXM_PF_SEGS 4
#define MXM_PF_PIECE (64 * 1024)

/* The pieces a group's share of `limit` bytes can take: an upper bound for every len[] (one
 * partial piece per segment at most). */
MXM_HD int64_t mxm_pf_pieces_bound(int64_t limit) {
    return (limit + MXM_PF_PIECE - 1) / MXM_PF_PIECE + MXM_PF_SEGS;
}

/* Piece j of the first `limit` bytes of the segments len[0..MXM_PF_SEGS): returns its segment
 * and sets its byte range [*off, *off + *n) inside it (0 < *n <= MXM_PF_PIECE), or returns -1
 * when the share has fewer pieces. */
MXM_HD int mxm_pf_piece(const int64_t len[MXM_PF_SEGS], int64_t limit, int64_t j, int64_t *off,
                        int64_t *n) {
    int64_t start = 0;
    for (int s = 0; s < MXM_PF_SEGS; s++) {
        int64_t take = limit - start;
        take = take < 0 ? 0 : take > len[s] ? len[s] : take;
        const int64_t pieces = (take + MXM_PF_PIECE - 1) / MXM_PF_PIECE;
        if (j < pieces) {
            *off = j * MXM_PF_PIECE;
            *n = take - *off < MXM_PF_PIECE ? take - *off : MXM_PF_PIECE;
            return s;
        }
        j -= pieces;
        start += len[s];
    }
    return -1;
}

/* The 16-byte-aligned part of [p + off, p + off + n) (a bulk prefetch takes 16-byte multiples
 * at 16-byte addresses; the few bytes left out are read by the GEMMs as usual): sets *addr and
 * returns its size (0: none). */
MXM_HD uint32_t mxm_pf_aligned(uintptr_t p, int64_t off, int64_t n, uintptr_t *addr) {
    const uintptr_t b = (p + (uintptr_t)off + 15) & ~(uintptr_t)15, e = (p + (uintptr_t)(off + n)) & ~(uintptr_t)15;
    *addr = b;
    return e > b ? (uint32_t)(e - b) : 0u;
}

#endif
