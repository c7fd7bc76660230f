// Standalone prototype: Hopper wgmma GEMM for the MXFP8 prefill path of mxmoe.
//
//   C[M, N] (fp32) = A[M, K] (bf16, rows optionally gathered through rows[]) . decode(Wq, Ws)^T
//   Wq: E4M3 codes uint8 [N, K] row-major; Ws: E8M0 scale bytes uint8 [N, K/32] (2^(byte-127)).
//
// Design (see NOTES.md): the roles of the operands are swapped so that the decoded weights are
// wgmma's A operand, held in REGISTERS, and the activations are wgmma's B operand, read from
// shared memory through a descriptor (128-byte swizzle, K-major). Each CTA computes a tile of
// 256 weight rows x 128 tokens with 3 warpgroups: warpgroup 0 is the producer (cp.async 16-byte
// copies of gathered activation rows and raw FP8 codes into a 6-stage ring, completion on
// mbarriers), warpgroups 1 and 2 are consumers (128 weight rows each = two m64n128k16 wgmmas per
// k16 step). A consumer decodes its own weight fragments (LDS.U16 of the codes, ~3 integer ops and
// one bf16x2 multiply per pair of weights) while its previous wgmmas run on the tensor cores:
// each k16 step's fragments are decoded while the previous step's wgmmas run, wgmma.wait_group 1
// (with wait_group 3 ptxas serializes the wgmmas: C7513). Persistent grid (one CTA per SM) so the
// producer prefetches the next tile while the consumers store the current one.
//
// Build: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xptxas -v wgmma_gemm.cu
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x)                                                                                                   \
    do {                                                                                                        \
        cudaError_t e_ = (x);                                                                                   \
        if (e_ != cudaSuccess) {                                                                                \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_));    \
            exit(1);                                                                                            \
        }                                                                                                       \
    } while (0)
#define CKL() CK(cudaGetLastError())

typedef __nv_bfloat16 bf16;

struct GemmArgs {
    const bf16 *A;     // activation rows
    int64_t lda;       // A row stride (elements)
    const int *rows;   // C row m reads A row rows[m]; nullptr: A row m
    const uint8_t *Wq; // [N, K] E4M3 codes
    const uint8_t *Ws; // [N, K/32] E8M0 scales
    float *C;          // [M, N] fp32
    int M, N, K;
};

// ------------------------------------------------------------------------------------------------
// Small PTX wrappers
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// Arrives on the barrier once all of this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// 16-byte copy global -> shared; bytes = 0 writes 16 zero bytes (no read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, uint32_t bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ uint32_t lds_u16(uint32_t addr) {
    uint16_t v;
    asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_acc(float &x) { asm volatile("" : "+f"(x)::"memory"); }
template <uint32_t R> __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <uint32_t R> __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}

// wgmma m64n128k16, A (bf16) from registers, B (bf16) from shared memory through a descriptor,
// fp32 accumulators d[64] (always accumulate: scale-d = 1).
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

// ------------------------------------------------------------------------------------------------
// MXFP8 decode of two E4M3 codes (x = b0 | b1 << 8, b0 = lower K index) into a bf16x2 word.
// ------------------------------------------------------------------------------------------------
__host__ __device__ inline float e8m0_to_f32(uint32_t s) {
    // 2^(s-127); byte 255 is NaN, byte 0 is 2^-127 (an fp32 subnormal).
    const uint32_t bits = s == 255 ? 0x7FC00000u : s == 0 ? 0x00400000u : s << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// DEC_EXACT: the project's path: hardware E4M3x2 -> f16x2, to fp32, times the scale, round to bf16
// (exact for every code and scale byte, NaN codes and byte 255 give NaN).
__device__ __forceinline__ uint32_t dec_exact(uint32_t x, float sc) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)x, __NV_E4M3);
    const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&h));
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * sc, f.y * sc);
    return *reinterpret_cast<const uint32_t *>(&b);
}

// DEC_FAST: bit trick. sign | (code & 0x7F) << 4 read as bf16 is the E4M3 value times 2^-120
// exactly, subnormal codes included (they become bf16 subnormals); one bf16x2 multiply by
// 2^(s-7) then gives value * 2^(s-127), rounded once like the exact path. Requires s <= 134
// (2^(s-7) must be a bf16 number) and no NaN codes (0x7F / 0xFF): the host checks the weights
// once and falls back to DEC_EXACT otherwise. mult = fast_mult(s).
__host__ __device__ inline uint32_t fast_mult(uint32_t s) { return (s + 120u) * 0x00800080u; }
__device__ __forceinline__ uint32_t dec_fast(uint32_t x, uint32_t mult) {
    const uint32_t t = __byte_perm(x, 0, 0x1404); // b1 << 24 | b0 << 8
    const uint32_t r = (t & 0x80008000u) | ((t >> 4) & 0x07F007F0u);
    uint32_t o;
    asm("mul.rn.bf16x2 %0, %1, %2;\n" : "=r"(o) : "r"(r), "r"(mult));
    return o;
}

enum { DEC_NONE = 0, DEC_FAST = 1, DEC_EXACT = 2 };

// ------------------------------------------------------------------------------------------------
// The wgmma kernel
// ------------------------------------------------------------------------------------------------
constexpr int WG_BW = 256;                  // weight rows per CTA tile (wgmma M side)
constexpr int WG_BT = 128;                  // tokens per CTA tile (wgmma N)
constexpr int WG_BK = 64;                   // K per stage
constexpr int SLOT_ACT = WG_BT * WG_BK * 2; // 16 KB: activations, 128 rows x 128 B, 128B-swizzled
constexpr int SLOT_W = WG_BW * WG_BK;       // 16 KB: E4M3 codes, 256 rows x 64 B, 16B chunks xor-swizzled
constexpr int SLOT = SLOT_ACT + SLOT_W;
constexpr int WG_THREADS = 384;

template <int STAGES> constexpr int wg_smem_bytes() { return STAGES * SLOT + 16 * STAGES + 1024; }

// Descriptor of a K-major bf16 operand with 128-byte swizzle: rows of 128 bytes, 8-row atoms of
// 1024 bytes (stride byte offset 1024), leading byte offset unused (1).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

template <int DEC, int STAGES>
__global__ void __launch_bounds__(WG_THREADS, 1) wg_gemm_kernel(GemmArgs g) {
    extern __shared__ uint8_t smem_raw[];
    const uint32_t sbase = (smem_u32(smem_raw) + 1023) & ~1023u; // 1024-aligned (128B-swizzle atoms)
    const uint32_t bar_full = sbase + STAGES * SLOT, bar_empty = bar_full + 8 * STAGES;
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(bar_full + 8 * s, 128);  // one cp.async arrival per producer thread
            mbar_init(bar_empty + 8 * s, 256); // one arrival per consumer thread
        }
    }
    __syncthreads();
    const int M = g.M, N = g.N, K = g.K;
    const int ntn = (N + WG_BW - 1) / WG_BW, ntm = (M + WG_BT - 1) / WG_BT, ntiles = ntn * ntm;
    const int nk = (K + WG_BK - 1) / WG_BK;

    if (tid < 128) {
        // ---------------- producer warpgroup ----------------
        setmaxnreg_dec<56>();
        const int ac = tid & 7, ar = tid >> 3; // activation chunk (8 bf16) and first row (+16 i)
        const int wc = tid & 3, wr = tid >> 2; // weight chunk (16 codes) and first row (+32 i)
        const uint32_t a_sw = (uint32_t)((ac ^ (ar & 7)) << 4);
        const uint32_t w_sw = (uint32_t)((wc ^ ((wr >> 1) & 3)) << 4);
        uint32_t it = 0;
        for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
            const int n0 = (tile % ntn) * WG_BW, m0 = (tile / ntn) * WG_BT;
            int arow[8];
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int m = m0 + ar + 16 * i;
                arow[i] = m < M ? (g.rows ? __ldg(g.rows + m) : m) : -1;
            }
            for (int kt = 0; kt < nk; kt++, it++) {
                const uint32_t s = it % STAGES, ph = (it / STAGES) & 1;
                if (it >= STAGES) mbar_wait(bar_empty + 8 * s, ph ^ 1);
                const int k0 = kt * WG_BK;
                const uint32_t slot = sbase + s * SLOT;
                const bool ka = k0 + 8 * ac < K;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const bool v = ka && arow[i] >= 0;
                    const bf16 *src = v ? g.A + (int64_t)arow[i] * g.lda + k0 + 8 * ac : g.A;
                    cp_async16(slot + (ar + 16 * i) * 128 + a_sw, src, v ? 16 : 0);
                }
                const bool kw = k0 + 16 * wc < K;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const int n = n0 + wr + 32 * i;
                    const bool v = kw && n < N;
                    const uint8_t *src = v ? g.Wq + (int64_t)n * K + k0 + 16 * wc : g.Wq;
                    cp_async16(slot + SLOT_ACT + (wr + 32 * i) * 64 + w_sw, src, v ? 16 : 0);
                }
                cp_async_arrive_noinc(bar_full + 8 * s);
            }
        }
    } else {
        // ---------------- consumer warpgroups ----------------
        setmaxnreg_inc<224>();
        const int ct = tid - 128, wgi = ct >> 7, w = (ct >> 5) & 3, lane = ct & 31, gq = lane >> 2, tq = lane & 3;
        const int rl = 128 * wgi + 16 * w + gq; // local weight row of fragment rows (mb = 0, rr = 0)
        const int sw = (gq >> 1) & 3;           // chunk swizzle of this thread's code rows
        const uint32_t a_thr = SLOT_ACT + rl * 64 + 2 * tq;
        const int KB = K / 32;
        const uint64_t desc0 = desc_sw128(sbase);
        uint32_t it = 0;
        for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
            const int n0 = (tile % ntn) * WG_BW, m0 = (tile / ntn) * WG_BT;
            const uint8_t *sp[2][2];
#pragma unroll
            for (int mb = 0; mb < 2; mb++)
#pragma unroll
                for (int rr = 0; rr < 2; rr++) {
                    const int n = n0 + rl + 64 * mb + 8 * rr;
                    sp[mb][rr] = n < N ? g.Ws + (int64_t)n * KB : nullptr;
                }
            // Scale bytes of this stage (two 32-blocks) for the 4 rows, prefetched one stage ahead.
            auto load_sc = [&](int kt, uint32_t (&o)[2][2]) {
#pragma unroll
                for (int mb = 0; mb < 2; mb++)
#pragma unroll
                    for (int rr = 0; rr < 2; rr++) {
                        uint32_t b0 = 127, b1 = 127;
                        if (sp[mb][rr]) {
                            b0 = __ldg(sp[mb][rr] + 2 * kt);
                            if (2 * kt + 1 < KB) b1 = __ldg(sp[mb][rr] + 2 * kt + 1);
                        }
                        o[mb][rr] = b0 | (b1 << 8);
                    }
            };
            uint32_t scur[2][2], snxt[2][2];
            load_sc(0, scur);
            float acc[2][64];
#pragma unroll
            for (int mb = 0; mb < 2; mb++)
#pragma unroll
                for (int i = 0; i < 64; i++) acc[mb][i] = 0.0f;

            for (int kt = 0; kt < nk; kt++, it++) {
                const uint32_t s = it % STAGES, ph = (it / STAGES) & 1;
                if (kt + 1 < nk) load_sc(kt + 1, snxt);
                uint32_t mult[2][2][2];
                float scf[2][2][2];
#pragma unroll
                for (int mb = 0; mb < 2; mb++)
#pragma unroll
                    for (int rr = 0; rr < 2; rr++)
#pragma unroll
                        for (int b = 0; b < 2; b++) {
                            const uint32_t sb = (scur[mb][rr] >> (8 * b)) & 0xFF;
                            if (DEC == DEC_FAST) mult[mb][rr][b] = fast_mult(sb);
                            if (DEC == DEC_EXACT) scf[mb][rr][b] = e8m0_to_f32(sb);
                        }
                mbar_wait(bar_full + 8 * s, ph);
                fence_proxy_async(); // cp.async wrote the activations through the generic proxy
                const uint32_t codes = sbase + s * SLOT + a_thr;
                uint32_t fr[4][2][4];
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    const int koff = ((ks ^ sw) << 4);
#pragma unroll
                    for (int mb = 0; mb < 2; mb++) {
                        const uint32_t p = codes + mb * 64 * 64 + koff;
                        const uint32_t x00 = lds_u16(p);              // row g,   k 2t
                        const uint32_t x01 = lds_u16(p + 8);          // row g,   k 8+2t
                        const uint32_t x10 = lds_u16(p + 8 * 64);     // row g+8, k 2t
                        const uint32_t x11 = lds_u16(p + 8 * 64 + 8); // row g+8, k 8+2t
                        const int b = ks >> 1;
                        if (DEC == DEC_FAST) {
                            fr[ks][mb][0] = dec_fast(x00, mult[mb][0][b]);
                            fr[ks][mb][1] = dec_fast(x10, mult[mb][1][b]);
                            fr[ks][mb][2] = dec_fast(x01, mult[mb][0][b]);
                            fr[ks][mb][3] = dec_fast(x11, mult[mb][1][b]);
                        } else if (DEC == DEC_EXACT) {
                            fr[ks][mb][0] = dec_exact(x00, scf[mb][0][b]);
                            fr[ks][mb][1] = dec_exact(x10, scf[mb][1][b]);
                            fr[ks][mb][2] = dec_exact(x01, scf[mb][0][b]);
                            fr[ks][mb][3] = dec_exact(x11, scf[mb][1][b]);
                        } else { // timing only: no conversion
                            fr[ks][mb][0] = x00 | 0x3F003F00u;
                            fr[ks][mb][1] = x10 | 0x3F003F00u;
                            fr[ks][mb][2] = x01 | 0x3F003F00u;
                            fr[ks][mb][3] = x11 | 0x3F003F00u;
                        }
                    }
                    wg_fence();
                    const uint64_t desc = desc0 + ((s * SLOT + ks * 32) >> 4);
                    wgmma_m64n128k16_rs(acc[0], fr[ks][0], desc);
                    wgmma_m64n128k16_rs(acc[1], fr[ks][1], desc);
                    wg_commit();
                    // k-step j-1 done, j runs while j+1 is decoded. Deeper queues (wait_group 3
                    // with a 4-deep fragment ring) make ptxas serialize every wgmma (C7513:
                    // the decode defines wgmma input registers inside the pipeline stage).
                    wg_wait<1>();
                    // The previous stage is complete once k-step 0 of this one is (released at
                    // k-step 1: releasing at k-step 0 also brings C7513 back with nvcc 13.0).
                    if (ks == 1 && kt > 0) mbar_arrive(bar_empty + 8 * ((it - 1) % STAGES));
                }
#pragma unroll
                for (int mb = 0; mb < 2; mb++)
#pragma unroll
                    for (int rr = 0; rr < 2; rr++) scur[mb][rr] = snxt[mb][rr];
            }
            wg_wait<0>();
            mbar_arrive(bar_empty + 8 * ((it - 1) % STAGES));
#pragma unroll
            for (int mb = 0; mb < 2; mb++)
#pragma unroll
                for (int i = 0; i < 64; i++) fence_acc(acc[mb][i]);
            // Epilogue: accumulator (row = weight row n, column = token m) straight to C[m][n].
#pragma unroll
            for (int mb = 0; mb < 2; mb++) {
                const int n = n0 + rl + 64 * mb;
#pragma unroll
                for (int i = 0; i < 16; i++) {
                    const int m = m0 + 8 * i + 2 * tq;
                    float *c0 = g.C + (int64_t)m * N + n;
                    if (m < M) {
                        if (n < N) c0[0] = acc[mb][4 * i + 0];
                        if (n + 8 < N) c0[8] = acc[mb][4 * i + 2];
                    }
                    if (m + 1 < M) {
                        if (n < N) c0[N] = acc[mb][4 * i + 1];
                        if (n + 8 < N) c0[N + 8] = acc[mb][4 * i + 3];
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Old-style kernel: the mainloop of src/cuda/gemm.cu (64 x 128 x 64 tiles, 8 warps of 32 x 32,
// bf16 mma.sync m16n8k16, weights decoded while staged into shared memory, next step prefetched
// into registers), in a non-grouped form with fp32 C, for comparison in the same run.
// ------------------------------------------------------------------------------------------------
namespace old {
#define OBM 64
#define OBN 128
#define OBK 64
#define OSROW 72
#define OTHREADS 256
struct smem_tiles {
    bf16 a[2][OBM][OSROW];
    bf16 b[2][OBN][OSROW];
};
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
struct stage {
    uint4 a[2];
    uint4 b[2];
    uint8_t s[2];
};
struct operand_rows {
    const bf16 *a[2];
    const uint8_t *b[2];
    const uint8_t *bs[2];
};
__device__ __forceinline__ void load_stage(stage &st, const operand_rows &r, int64_t k0, int64_t K) {
    const int ac = (threadIdx.x % 8) * 8, bc = (threadIdx.x % 4) * 16;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        st.a[i] = r.a[i] && k0 + ac < K ? *reinterpret_cast<const uint4 *>(r.a[i] + k0 + ac) : make_uint4(0, 0, 0, 0);
        if (r.b[i] && k0 + bc < K) {
            st.b[i] = __ldg(reinterpret_cast<const uint4 *>(r.b[i] + k0 + bc));
            st.s[i] = __ldg(r.bs[i] + (k0 + bc) / 32);
        } else {
            st.b[i] = make_uint4(0, 0, 0, 0);
            st.s[i] = 127;
        }
    }
}
__device__ __forceinline__ void store_stage(const stage &st, smem_tiles &t, int buf) {
    const int ar = threadIdx.x / 8, ac = (threadIdx.x % 8) * 8, br = threadIdx.x / 4, bc = (threadIdx.x % 4) * 16;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        *reinterpret_cast<uint4 *>(&t.a[buf][ar + 32 * i][ac]) = st.a[i];
        const float sc = e8m0_to_f32(st.s[i]);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(&st.b[i]);
        __align__(16) uint32_t out[8];
#pragma unroll
        for (int j = 0; j < 8; j++) out[j] = dec_exact(q[j], sc);
        *reinterpret_cast<uint4 *>(&t.b[buf][br + 64 * i][bc]) = *reinterpret_cast<uint4 *>(&out[0]);
        *reinterpret_cast<uint4 *>(&t.b[buf][br + 64 * i][bc + 8]) = *reinterpret_cast<uint4 *>(&out[4]);
    }
}
__device__ __forceinline__ void mainloop(smem_tiles &t, const operand_rows &rows, int64_t K, float (&acc)[2][4][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const int wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[mi][ni][q] = 0.0f;
    stage st;
    load_stage(st, rows, 0, K);
    store_stage(st, t, 0);
    __syncthreads();
    int buf = 0;
    for (int64_t k0 = 0; k0 < K; k0 += OBK) {
        const bool more = k0 + OBK < K;
        if (more) load_stage(st, rows, k0 + OBK, K);
#pragma unroll
        for (int kk = 0; kk < OBK; kk += 16) {
            uint32_t af[2][4], bfr[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(af[mi], &t.a[buf][wm * 32 + mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8][kk + (lane / 16) * 8]);
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t r[4];
                ldmatrix_x4(r, &t.b[buf][wn * 32 + np * 16 + (lane % 8) + (lane / 16) * 8][kk + ((lane / 8) % 2) * 8]);
                bfr[2 * np][0] = r[0], bfr[2 * np][1] = r[1], bfr[2 * np + 1][0] = r[2], bfr[2 * np + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_bf16(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
        }
        if (more) store_stage(st, t, buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }
}
__global__ void __launch_bounds__(OTHREADS) old_kernel(GemmArgs g) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    smem_tiles &t = *reinterpret_cast<smem_tiles *>(smem_raw);
    const int m0 = blockIdx.x * OBM, h0 = blockIdx.y * OBN, tid = threadIdx.x;
    operand_rows rows;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ar = tid / 8 + 32 * i, br = tid / 4 + 64 * i;
        const int m = m0 + ar;
        rows.a[i] = m < g.M ? g.A + (int64_t)(g.rows ? g.rows[m] : m) * g.lda : nullptr;
        rows.b[i] = nullptr, rows.bs[i] = nullptr;
        if (h0 + br < g.N)
            rows.b[i] = g.Wq + (int64_t)(h0 + br) * g.K, rows.bs[i] = g.Ws + (int64_t)(h0 + br) * (g.K / 32);
    }
    float acc[2][4][4];
    mainloop(t, rows, g.K, acc);
    const int lane = tid & 31, warp = tid / 32, wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int r = wm * 32 + mi * 16 + lane / 4 + (q / 2) * 8;
                const int h = h0 + wn * 32 + ni * 8 + (lane % 4) * 2 + (q % 2);
                if (m0 + r < g.M && h < g.N) g.C[(int64_t)(m0 + r) * g.N + h] = acc[mi][ni][q];
            }
}
} // namespace old

// ------------------------------------------------------------------------------------------------
// Reference (naive, fp64 sums of exact products) on sampled rows, input generation, checks
// ------------------------------------------------------------------------------------------------
__device__ double dec_ref(uint8_t b, uint8_t s) {
    // E4M3 decoded by hand (independent of the hardware converter), times 2^(s-127), rounded to bf16.
    const int e = (b >> 3) & 15, m = b & 7;
    if ((b & 0x7F) == 0x7F || s == 255) return nan("");
    double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
    if (b & 0x80) v = -v;
    v = ldexp(v, (int)s - 127);
    return (double)__bfloat162float(__float2bfloat16_rn((float)v));
}

// One warp per (sampled row, n).
__global__ void ref_kernel(GemmArgs g, const int *samp, int ns, double *out) {
    const int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (wid >= (int64_t)ns * g.N) return;
    const int si = (int)(wid / g.N), n = (int)(wid % g.N);
    const int m = samp[si];
    const int64_t row = g.rows ? g.rows[m] : m;
    const int KB = g.K / 32;
    double acc = 0;
    for (int k = lane; k < g.K; k += 32)
        acc += (double)__bfloat162float(g.A[row * g.lda + k]) * dec_ref(g.Wq[(int64_t)n * g.K + k], g.Ws[(int64_t)n * KB + k / 32]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, o);
    if (lane == 0) out[(int64_t)si * g.N + n] = acc;
}

__device__ __forceinline__ uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
__device__ __forceinline__ float normal_of(uint64_t seed, uint64_t i) {
    const uint64_t h = mix64(seed ^ mix64(i));
    const float u1 = ((uint32_t)(h >> 40) + 1.0f) / 16777217.0f, u2 = (uint32_t)(h & 0xFFFFFF) / 16777216.0f;
    return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}
__global__ void fill_act(bf16 *p, int64_t n, uint64_t seed) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16_rn(normal_of(seed, i));
}
// Codes: E4M3 (saturating) of normal values with sigma 96: the whole code range, subnormals and
// zeros included, never a NaN code.
__global__ void fill_codes(uint8_t *p, int64_t n, uint64_t seed) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = (uint8_t)__nv_cvt_float_to_fp8(96.0f * normal_of(seed, i), __NV_SATFINITE, __NV_E4M3);
}
__global__ void fill_scales(uint8_t *p, int64_t n, uint64_t seed, int lo, int hi) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = (uint8_t)(lo + mix64(seed ^ (i * 7919)) % (uint64_t)(hi - lo + 1));
}
__global__ void fill_rows(int *p, int n, int T, uint64_t seed) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        p[i] = (int)(mix64(seed ^ (uint64_t)i * 131) % (uint64_t)T);
}
__global__ void count_nan(const float *c, int64_t n, unsigned long long *cnt) {
    unsigned long long local = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        local += isnan(c[i]) ? 1 : 0;
    if (local) atomicAdd(cnt, local);
}

// Every code pair x (both positions) against every scale byte 0..134: dec_fast must equal dec_exact
// bit for bit (NaN codes excluded: see dec_fast).
__global__ void decode_test(unsigned long long *bad) {
    const int s = blockIdx.x; // 0..134
    for (int c = threadIdx.x; c < 65536; c += blockDim.x) {
        const uint32_t b0 = c & 0xFF, b1 = c >> 8;
        if ((b0 & 0x7F) == 0x7F || (b1 & 0x7F) == 0x7F) continue;
        const uint32_t f = dec_fast((uint32_t)c, fast_mult(s)), e = dec_exact((uint32_t)c, e8m0_to_f32(s));
        if (f != e) atomicAdd(bad, 1ull);
    }
}

// ------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------
struct Problem {
    const char *name;
    int M, N, K;
    bool gather;
    bool full_check; // reference on every row (small problems) or on 256 sampled rows
};
struct Set {
    bf16 *A = nullptr;
    uint8_t *Wq = nullptr, *Ws = nullptr;
    float *C = nullptr;
    int *rows = nullptr;
};

static int g_sms = 132;
static int g_reps = 20;

typedef void (*launch_fn)(const GemmArgs &);

static void launch_old(const GemmArgs &g) {
    const dim3 grid((g.M + OBM - 1) / OBM, (g.N + OBN - 1) / OBN);
    old::old_kernel<<<grid, OTHREADS, sizeof(old::smem_tiles)>>>(g);
}
template <int DEC, int STAGES> static void launch_wg(const GemmArgs &g) {
    const int tiles = ((g.N + WG_BW - 1) / WG_BW) * ((g.M + WG_BT - 1) / WG_BT);
    wg_gemm_kernel<DEC, STAGES><<<std::min(g_sms, tiles), WG_THREADS, wg_smem_bytes<STAGES>()>>>(g);
}

struct Variant {
    const char *name;
    launch_fn fn;
    bool exact; // computes the real function (checked)
};

static GemmArgs args_of(const Problem &p, const Set &s) {
    GemmArgs g;
    g.A = s.A, g.lda = p.K, g.rows = p.gather ? s.rows : nullptr, g.Wq = s.Wq, g.Ws = s.Ws, g.C = s.C;
    g.M = p.M, g.N = p.N, g.K = p.K;
    return g;
}

static void make_set(const Problem &p, Set &s, uint64_t seed) {
    const int64_t T = p.M; // source rows of A (gathered with repeats when p.gather)
    CK(cudaMalloc(&s.A, (size_t)T * p.K * sizeof(bf16)));
    CK(cudaMalloc(&s.Wq, (size_t)p.N * p.K));
    CK(cudaMalloc(&s.Ws, (size_t)p.N * (p.K / 32)));
    CK(cudaMalloc(&s.C, (size_t)p.M * p.N * sizeof(float)));
    CK(cudaMalloc(&s.rows, (size_t)p.M * sizeof(int)));
    fill_act<<<1024, 256>>>(s.A, T * p.K, seed * 4 + 1);
    CKL();
    fill_codes<<<1024, 256>>>(s.Wq, (int64_t)p.N * p.K, seed * 4 + 2);
    CKL();
    fill_scales<<<256, 256>>>(s.Ws, (int64_t)p.N * (p.K / 32), seed * 4 + 3, 120, 130);
    CKL();
    fill_rows<<<64, 256>>>(s.rows, p.M, (int)T, seed * 4 + 4);
    CKL();
}
static void free_set(Set &s) {
    cudaFree(s.A), cudaFree(s.Wq), cudaFree(s.Ws), cudaFree(s.C), cudaFree(s.rows);
    s = Set();
}

// Poisons C, runs once, checks that nothing is NaN (every element written) and the relative L2
// error against the fp64 reference on the sampled rows. Returns the error (NaN: failed).
static double check(const Problem &p, const Set &s, launch_fn fn, const std::vector<int> &samp, const double *d_ref_out,
                    const std::vector<double> &ref) {
    const GemmArgs g = args_of(p, s);
    CK(cudaMemset(s.C, 0xFF, (size_t)p.M * p.N * sizeof(float))); // NaN
    fn(g);
    CKL();
    CK(cudaDeviceSynchronize());
    unsigned long long *d_cnt;
    CK(cudaMalloc(&d_cnt, sizeof(unsigned long long)));
    CK(cudaMemset(d_cnt, 0, sizeof(unsigned long long)));
    count_nan<<<1024, 256>>>(s.C, (int64_t)p.M * p.N, d_cnt);
    CKL();
    unsigned long long nn = 0;
    CK(cudaMemcpy(&nn, d_cnt, sizeof(nn), cudaMemcpyDeviceToHost));
    CK(cudaFree(d_cnt));
    std::vector<float> row(p.N);
    double num = 0, den = 0;
    for (size_t i = 0; i < samp.size(); i++) {
        CK(cudaMemcpy(row.data(), s.C + (int64_t)samp[i] * p.N, p.N * sizeof(float), cudaMemcpyDeviceToHost));
        for (int n = 0; n < p.N; n++) {
            const double r = ref[i * p.N + n], d = (double)row[n] - r;
            num += d * d, den += r * r;
        }
    }
    (void)d_ref_out;
    if (nn) {
        printf("    %llu NaN (unwritten or wrong) elements\n", nn);
        return nan("");
    }
    return sqrt(num / den);
}

static double time_ms(const Problem &p, const std::vector<Set> &sets, launch_fn fn) {
    std::vector<cudaEvent_t> ev(2 * g_reps);
    for (auto &e : ev) CK(cudaEventCreate(&e));
    for (int i = 0; i < 3; i++) fn(args_of(p, sets[i % sets.size()]));
    CKL();
    for (int i = 0; i < g_reps; i++) {
        const GemmArgs g = args_of(p, sets[i % sets.size()]);
        CK(cudaEventRecord(ev[2 * i]));
        fn(g);
        CK(cudaEventRecord(ev[2 * i + 1]));
    }
    CKL();
    CK(cudaDeviceSynchronize());
    std::vector<float> ms(g_reps);
    for (int i = 0; i < g_reps; i++) CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (auto &e : ev) CK(cudaEventDestroy(e));
    std::sort(ms.begin(), ms.end());
    return ms[g_reps / 2];
}

struct Row {
    std::string shape, kernel;
    double ms, tflops, err;
};

int main(int argc, char **argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    const bool quick = argc > 1 && !strcmp(argv[1], "--quick"); // correctness only
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    printf("device: %s, %d SMs, L2 %d MB, smem/block opt-in %zu KB\n", prop.name, g_sms, prop.l2CacheSize >> 20,
           prop.sharedMemPerBlockOptin >> 10);
    const uint64_t seed0 = (uint64_t)time(nullptr);
    printf("seed %llu\n", (unsigned long long)seed0);

    // Decoder unit test: fast bit-trick decode vs the exact path, all code pairs x scale bytes 0..134.
    {
        unsigned long long *d_bad, bad = 0;
        CK(cudaMalloc(&d_bad, 8));
        CK(cudaMemset(d_bad, 0, 8));
        decode_test<<<135, 256>>>(d_bad);
        CKL();
        CK(cudaMemcpy(&bad, d_bad, 8, cudaMemcpyDeviceToHost));
        CK(cudaFree(d_bad));
        printf("decode test (dec_fast == dec_exact bitwise, 135 scales x 64516 code pairs): %llu mismatches\n", bad);
    }

#define SET_SMEM(K_)                                                                                             \
    CK(cudaFuncSetAttribute(K_, cudaFuncAttributeMaxDynamicSharedMemorySize, wg_smem_bytes<6>()));
    SET_SMEM((wg_gemm_kernel<DEC_FAST, 6>));
    SET_SMEM((wg_gemm_kernel<DEC_EXACT, 6>));
    SET_SMEM((wg_gemm_kernel<DEC_NONE, 6>));
    CK(cudaFuncSetAttribute(wg_gemm_kernel<DEC_FAST, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, wg_smem_bytes<4>()));
    CK(cudaFuncSetAttribute(old::old_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sizeof(old::smem_tiles)));

    const Variant variants[] = {
        {"old mma.sync (gemm.cu)", launch_old, true},
        {"wgmma exact-decode", launch_wg<DEC_EXACT, 6>, true},
        {"wgmma fast-decode", launch_wg<DEC_FAST, 6>, true},
        {"wgmma fast-decode 4st", launch_wg<DEC_FAST, 4>, true},
        {"wgmma no-decode (bound)", launch_wg<DEC_NONE, 6>, false},
    };
    const Problem problems[] = {
        {"small 1000x700x2080 gath", 1000, 700, 2080, true, true},
        {"small 300x256x96", 300, 256, 96, false, true},
        {"small 517x2688x1888 gath", 517, 2688, 1888, true, true},
        {"a 16384x3712x2688 gath", 16384, 3712, 2688, true, false},
        {"b 16384x2688x1856", 16384, 2688, 1856, false, false},
        {"c 8192x4096x7168 gath", 8192, 4096, 7168, true, false},
        {"a' 16384x3712x2688 contig", 16384, 3712, 2688, false, false},
    };
    std::vector<Row> table;
    bool all_ok = true;
    for (const Problem &p : problems) {
        const bool timed = !p.full_check && !quick;
        const int nset = timed ? 3 : 1;
        std::vector<Set> sets(nset);
        for (int i = 0; i < nset; i++) make_set(p, sets[i], seed0 * 16 + i * 977 + (uint64_t)p.M * 31 + p.K);
        CK(cudaDeviceSynchronize());
        // Reference rows of set 0.
        std::vector<int> samp;
        if (p.full_check)
            for (int m = 0; m < p.M; m++) samp.push_back(m);
        else {
            for (int m = p.M - 64; m < p.M; m++) samp.push_back(m);
            for (int i = 0; i < 192; i++) samp.push_back((int)(((uint64_t)(seed0 + i) * 2654435761ull) % (uint64_t)(p.M - 64)));
        }
        int *d_samp;
        double *d_ref;
        CK(cudaMalloc(&d_samp, samp.size() * sizeof(int)));
        CK(cudaMalloc(&d_ref, samp.size() * p.N * sizeof(double)));
        CK(cudaMemcpy(d_samp, samp.data(), samp.size() * sizeof(int), cudaMemcpyHostToDevice));
        {
            const int64_t warps = (int64_t)samp.size() * p.N;
            ref_kernel<<<(unsigned)((warps * 32 + 255) / 256), 256>>>(args_of(p, sets[0]), d_samp, (int)samp.size(), d_ref);
            CKL();
        }
        std::vector<double> ref(samp.size() * p.N);
        CK(cudaMemcpy(ref.data(), d_ref, ref.size() * sizeof(double), cudaMemcpyDeviceToHost));
        const double flop = 2.0 * p.M * p.N * (double)p.K;
        for (const Variant &v : variants) {
            double err = nan("");
            if (v.exact) {
                err = check(p, sets[0], v.fn, samp, d_ref, ref);
                const bool ok = err < 1e-5;
                all_ok &= ok;
                printf("  %-28s %-26s rel err %.3e %s\n", p.name, v.name, err, ok ? "ok" : "FAIL");
            }
            if (timed) {
                const double ms = time_ms(p, sets, v.fn);
                table.push_back({p.name, v.name, ms, flop / (ms * 1e-3) / 1e12, err});
                printf("  %-28s %-26s %8.3f ms %7.1f TFLOP/s\n", p.name, v.name, ms, table.back().tflops);
            }
            fflush(stdout);
        }
        CK(cudaFree(d_samp));
        CK(cudaFree(d_ref));
        for (auto &s : sets) free_set(s);
    }
    printf("\n%-28s %-26s %9s %9s %10s\n", "shape (MxNxK)", "kernel", "ms", "TFLOP/s", "rel err");
    for (const Row &r : table)
        printf("%-28s %-26s %9.3f %9.1f %10.2e\n", r.shape.c_str(), r.kernel.c_str(), r.ms, r.tflops, r.err);
    printf("correctness: %s\n", all_ok ? "ALL OK" : "FAILURES");
    return all_ok ? 0 : 1;
}
