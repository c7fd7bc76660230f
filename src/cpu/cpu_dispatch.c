/* Kernel-set dispatch. The sets and the CPU features each one is compiled for are the rows of
 * cpu_isa.def; this file checks those same features (cpuid bit and the XCR0 state the operating
 * system must enable) before it installs a set, so no set runs an instruction this CPU lacks. */
#include <cpuid.h>
#include <stddef.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

void mxm_cpu_kernels_init_ref(mxm_cpu_kernels *k) {
    k->name = "ref";
    k->mx_quantize_f32 = mxm_mx_quantize_f32_ref;
    k->mx_quantize_bf16 = mxm_mx_quantize_bf16_ref;
    k->mx_dequantize_f32 = mxm_mx_dequantize_f32_ref;
    k->mx_fakequant_f32 = mxm_mx_fakequant_f32_ref;
    k->gemm_panel16 = mxm_gemm_panel16_ref;
    /* no bf16 GEMV and no tiles in the reference set (their twins are tested beside the sets) */
    k->wfmt[MXM_WFMT_MXFP8] =
        (mxm_cpu_wfmt_kernels){.pack_panel = mxm_pack_mxfp8_panel_ref, .gemv = mxm_gemv_mxfp8_ref};
    k->wfmt[MXM_WFMT_FP8_BLOCK] = (mxm_cpu_wfmt_kernels){.pack_panel = mxm_pack_fp8block_panel_ref,
                                                         .gemv = mxm_gemv_fp8block_ref};
    k->wfmt[MXM_WFMT_BF16] = (mxm_cpu_wfmt_kernels){.pack_panel = mxm_pack_bf16_panel_ref};
    k->wfmt[MXM_WFMT_F32] = (mxm_cpu_wfmt_kernels){.pack_panel = mxm_pack_f32_panel_ref};
}

/* ---- CPU features: cpuid bit and required XCR0 state ------------------------------------- */

#define XCR0_AVX 0x06u    /* SSE and AVX (ymm) state */
#define XCR0_AVX512 0xE6u /* + opmask, zmm0-15 upper halves, zmm16-31 */
#define XCR0_AMX 0x60000u /* XTILECFG (bit 17) and XTILEDATA (bit 18) */

typedef struct feature {
    unsigned leaf, subleaf, reg, bit; /* reg: 0 eax, 1 ebx, 2 ecx, 3 edx */
    unsigned xcr0;
} feature;

enum {
    FEAT_AVX2,
    FEAT_FMA,
    FEAT_F16C,
    FEAT_AVX512F,
    FEAT_AVX512BW,
    FEAT_AVX512VL,
    FEAT_AVX512DQ,
    FEAT_AVX512VBMI,
    FEAT_AVX512BF16,
    FEAT_AMX_TILE,
    FEAT_AMX_BF16,
    FEAT_COUNT
};

static const feature features[FEAT_COUNT] = {
    [FEAT_AVX2] = {7, 0, 1, 5, XCR0_AVX},          [FEAT_FMA] = {1, 0, 2, 12, XCR0_AVX},
    [FEAT_F16C] = {1, 0, 2, 29, XCR0_AVX},         [FEAT_AVX512F] = {7, 0, 1, 16, XCR0_AVX512},
    [FEAT_AVX512BW] = {7, 0, 1, 30, XCR0_AVX512},  [FEAT_AVX512VL] = {7, 0, 1, 31, XCR0_AVX512},
    [FEAT_AVX512DQ] = {7, 0, 1, 17, XCR0_AVX512},  [FEAT_AVX512VBMI] = {7, 0, 2, 1, XCR0_AVX512},
    [FEAT_AVX512BF16] = {7, 1, 0, 5, XCR0_AVX512}, [FEAT_AMX_TILE] = {7, 0, 3, 24, XCR0_AMX},
    [FEAT_AMX_BF16] = {7, 0, 3, 22, XCR0_AMX},
};

static unsigned xcr0_state(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    return lo;
}

/* Linux hands out the 8 KiB tile-data state only to processes that ask for it, once per process
 * (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA; threads created before or after share it); a
 * refusal (an older kernel, a seccomp filter) leaves the sets without tiles. Called under
 * init_sets' lock. */
static bool amx_permitted(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    return false;
#endif
}

static bool cpu_has(int f) {
    const feature *ft = &features[f];
    unsigned r[4];
    if (!__get_cpuid_count(ft->leaf, ft->subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
    if (!(r[ft->reg] >> ft->bit & 1u) || (xcr0_state() & ft->xcr0) != ft->xcr0) return false;
    return f != FEAT_AMX_TILE || amx_permitted();
}

/* ---- the sets ------------------------------------------------------------------------------------- */

enum {
    SET_ref,
#define MXM_ISA(name, parent, feats) SET_##name,
#include "cpu/cpu_isa.def"
#undef MXM_ISA
    SET_COUNT
};

static mxm_cpu_kernels sets[SET_COUNT];
static bool runnable[SET_COUNT];
static int best, initialized;

/* Quantize-then-decode through a set's own row kernels, one block at a time (the SIMD sets
 * provide quantize and dequantize; this composes them). */
static inline void fakequant_with(const mxm_cpu_kernels *k, const float *x, int64_t n, float *out, int rule) {
    uint8_t q[MXM_MX_BLOCK], s;
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++) {
        k->mx_quantize_f32(x + b * MXM_MX_BLOCK, MXM_MX_BLOCK, q, &s, rule);
        k->mx_dequantize_f32(q, &s, MXM_MX_BLOCK, out + b * MXM_MX_BLOCK);
    }
}
#define MXM_ISA(name, parent, feats)                                                                \
    static void fakequant_##name(const float *x, int64_t n, float *out, int rule) {                \
        fakequant_with(&sets[SET_##name], x, n, out, rule);                                         \
    }
#include "cpu/cpu_isa.def"
#undef MXM_ISA

static void init_sets(void) {
    mxm_cpu_kernels_init_ref(&sets[SET_ref]);
    runnable[SET_ref] = true;
    best = SET_ref;
#define F(X) &&cpu_has(FEAT_##X)
#define MXM_ISA(set, parent, feats)                                                                \
    runnable[SET_##set] = runnable[SET_##parent] feats;                                            \
    if (runnable[SET_##set]) {                                                                     \
        sets[SET_##set] = sets[SET_##parent];                                                      \
        mxm_cpu_init_##set(&sets[SET_##set]);                                                     \
        sets[SET_##set].name = #set;                                                              \
        sets[SET_##set].mx_fakequant_f32 = fakequant_##set;                                       \
        best = SET_##set;                                                                          \
    }
#include "cpu/cpu_isa.def"
#undef MXM_ISA
#undef F
}

static void ensure_init(void) {
    if (!__atomic_load_n(&initialized, __ATOMIC_ACQUIRE)) {
#pragma omp critical(mxm_cpu_kernels_init)
        if (!initialized) {
            init_sets();
            __atomic_store_n(&initialized, 1, __ATOMIC_RELEASE);
        }
    }
}

const mxm_cpu_kernels *mxm_cpu_kernels_get(bool force_ref) {
    ensure_init();
    if (force_ref || mxm_env_forces_ref()) return &sets[SET_ref];
    const char *env = getenv("MXM_KERNELS");
    if (env)
        for (int i = 0; i < SET_COUNT; i++)
            if (runnable[i] && strcmp(env, sets[i].name) == 0) return &sets[i];
    return &sets[best];
}

int mxm_cpu_kernel_sets(const mxm_cpu_kernels **out, int max) {
    ensure_init();
    int n = 0;
    for (int i = 0; i < SET_COUNT && n < max; i++)
        if (runnable[i]) out[n++] = &sets[i];
    return n;
}
