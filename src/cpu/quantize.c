/* Host implementations of the public tensor-level format functions (mxm_mxfp8_quantize, ...):
 * argument checks once, then rows split over threads, each row through the kernel table. */
#include <float.h>

#include "core/core.h"
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

/* Rows below this many elements in total run on one thread: thread start-up costs more. */
#define MXM_PARALLEL_MIN_ELEMS (1 << 16)

static mxm_status check_matrix(const void *a, const void *b, const void *c, int64_t rows,
                               int64_t cols, const char *fn) {
    if (!a || !b || !c) return mxm_fail(MXM_ERR_NULL, "%s: NULL tensor pointer", fn);
    if (rows < 0 || cols < 0)
        return mxm_fail(MXM_ERR_SHAPE, "%s: negative shape [%lld, %lld]", fn, (long long)rows,
                        (long long)cols);
    int64_t n;
    if (!mxm_mul_i64(rows, cols, &n) || n > INT64_MAX / 8)
        return mxm_fail(MXM_ERR_OVERFLOW, "%s: [%lld, %lld] overflows", fn, (long long)rows,
                        (long long)cols);
    return MXM_OK;
}

static mxm_status check_float_dtype(int32_t dt, const char *fn, const char *what) {
    if (dt != MXM_DT_F32 && dt != MXM_DT_BF16)
        return mxm_fail(MXM_ERR_DTYPE, "%s: %s dtype %s is not supported; supported: F32, BF16", fn,
                        what, mxm_dtype_name(dt));
    return MXM_OK;
}

static int nthreads_for(int64_t elems, int32_t requested) {
    return elems < MXM_PARALLEL_MIN_ELEMS ? 1 : mxm_threads(requested);
}

mxm_status mxm_mxfp8_quantize(const void *x, int32_t x_dtype, int64_t rows, int64_t cols,
                              int64_t x_stride, uint8_t *q, uint8_t *scales, int32_t rule,
                              int32_t num_threads) {
    const char *fn = "mxm_mxfp8_quantize";
    mxm_status st = check_matrix(x, q, scales, rows, cols, fn);
    if (st) return st;
    if ((st = check_float_dtype(x_dtype, fn, "input"))) return st;
    if (cols % MXM_MX_BLOCK)
        return mxm_fail(MXM_ERR_SHAPE, "%s: cols=%lld is not a multiple of 32", fn, (long long)cols);
    if (rule != MXM_SCALE_RCEIL && rule != MXM_SCALE_FLOOR)
        return mxm_fail(MXM_ERR_INVALID_ARG, "%s: scale rule %d unknown; supported: rceil (0), floor (1)",
                        fn, rule);
    if (x_stride == 0) x_stride = cols;
    if (x_stride < cols) return mxm_fail(MXM_ERR_SHAPE, "%s: stride %lld < cols", fn, (long long)x_stride);
    const mxm_cpu_kernels *k = mxm_cpu_kernels_get(false);
    const int nt = nthreads_for(rows * cols, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        if (x_dtype == MXM_DT_F32)
            k->mx_quantize_f32((const float *)x + r * x_stride, cols, q + r * cols,
                               scales + r * (cols / MXM_MX_BLOCK), rule);
        else
            k->mx_quantize_bf16((const uint16_t *)x + r * x_stride, cols, q + r * cols,
                                scales + r * (cols / MXM_MX_BLOCK), rule);
    }
    return MXM_OK;
}

mxm_status mxm_mxfp8_dequantize(const uint8_t *q, const uint8_t *scales, int64_t rows,
                                int64_t cols, void *out, int32_t out_dtype, int32_t num_threads) {
    const char *fn = "mxm_mxfp8_dequantize";
    mxm_status st = check_matrix(q, scales, out, rows, cols, fn);
    if (st) return st;
    if ((st = check_float_dtype(out_dtype, fn, "output"))) return st;
    if (cols % MXM_MX_BLOCK)
        return mxm_fail(MXM_ERR_SHAPE, "%s: cols=%lld is not a multiple of 32", fn, (long long)cols);
    const mxm_cpu_kernels *k = mxm_cpu_kernels_get(false);
    const int nt = nthreads_for(rows * cols, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *qr = q + r * cols, *sr = scales + r * (cols / MXM_MX_BLOCK);
        if (out_dtype == MXM_DT_F32) {
            k->mx_dequantize_f32(qr, sr, cols, (float *)out + r * cols);
        } else {
            uint16_t *o = (uint16_t *)out + r * cols;
            float tmp[MXM_MX_BLOCK];
            for (int64_t c = 0; c < cols; c += MXM_MX_BLOCK) {
                k->mx_dequantize_f32(qr + c, sr + c / MXM_MX_BLOCK, MXM_MX_BLOCK, tmp);
                for (int i = 0; i < MXM_MX_BLOCK; i++) o[c + i] = mxm_bf16_rne(tmp[i]);
            }
        }
    }
    return MXM_OK;
}

static float load_elem(const void *x, int32_t dt, int64_t i) {
    return dt == MXM_DT_F32 ? ((const float *)x)[i] : mxm_bf16_decode(((const uint16_t *)x)[i]);
}

/* amax of a row segment; NaN if any element is NaN (so the scale and codes become NaN). */
static float seg_amax(const void *x, int32_t dt, int64_t off, int64_t n) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float v = load_elem(x, dt, off + i);
        const float a = v < 0 ? -v : v;
        if (a != a) return a;
        if (a > amax) amax = a;
    }
    return amax;
}

mxm_status mxm_fp8block_quantize_act(const void *x, int32_t x_dtype, int64_t rows, int64_t cols,
                                     uint8_t *q, float *scales, int32_t scales_transposed,
                                     int32_t num_threads) {
    const char *fn = "mxm_fp8block_quantize_act";
    mxm_status st = check_matrix(x, q, scales, rows, cols, fn);
    if (st) return st;
    if ((st = check_float_dtype(x_dtype, fn, "input"))) return st;
    const int64_t nb = mxm_ceil_div(cols, MXM_FP8_BLOCK);
    const int nt = nthreads_for(rows * cols, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float seg[MXM_FP8_BLOCK];
        for (int64_t b = 0; b < nb; b++) {
            const int64_t c0 = b * MXM_FP8_BLOCK;
            const int n = cols - c0 < MXM_FP8_BLOCK ? (int)(cols - c0) : MXM_FP8_BLOCK;
            for (int i = 0; i < n; i++) seg[i] = load_elem(x, x_dtype, r * cols + c0 + i);
            scales[scales_transposed ? b * rows + r : r * nb + b] = mxm_fp8block_quantize_seg(seg, n, q + r * cols + c0);
        }
    }
    return MXM_OK;
}

mxm_status mxm_fp8block_quantize_weight(const void *w, int32_t w_dtype, int64_t rows, int64_t cols,
                                        uint8_t *q, float *scales, int32_t num_threads) {
    const char *fn = "mxm_fp8block_quantize_weight";
    mxm_status st = check_matrix(w, q, scales, rows, cols, fn);
    if (st) return st;
    if ((st = check_float_dtype(w_dtype, fn, "input"))) return st;
    const int64_t rb = mxm_ceil_div(rows, MXM_FP8_BLOCK), cb = mxm_ceil_div(cols, MXM_FP8_BLOCK);
    const int nt = nthreads_for(rows * cols, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
    for (int64_t bi = 0; bi < rb; bi++) {
        for (int64_t bj = 0; bj < cb; bj++) {
            const int64_t r0 = bi * MXM_FP8_BLOCK, c0 = bj * MXM_FP8_BLOCK;
            const int64_t r1 = r0 + MXM_FP8_BLOCK < rows ? r0 + MXM_FP8_BLOCK : rows;
            const int64_t n = cols - c0 < MXM_FP8_BLOCK ? cols - c0 : MXM_FP8_BLOCK;
            float amax = 0.0f;
            for (int64_t r = r0; r < r1; r++) {
                const float a = seg_amax(w, w_dtype, r * cols + c0, n);
                if (a != a || a > amax) amax = a;
                if (a != a) break;
            }
            const float s = mxm_fp8block_scale(amax);
            scales[bi * cb + bj] = s;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t i = 0; i < n; i++)
                    q[r * cols + c0 + i] = mxm_e4m3_rne_sat(load_elem(w, w_dtype, r * cols + c0 + i) / s);
        }
    }
    return MXM_OK;
}

mxm_status mxm_fp8block_dequantize(const uint8_t *q, const float *scales, int64_t rows,
                                   int64_t cols, int32_t block_rows, int32_t scales_transposed,
                                   void *out, int32_t out_dtype, int32_t num_threads) {
    const char *fn = "mxm_fp8block_dequantize";
    mxm_status st = check_matrix(q, scales, out, rows, cols, fn);
    if (st) return st;
    if ((st = check_float_dtype(out_dtype, fn, "output"))) return st;
    if (block_rows != 1 && block_rows != MXM_FP8_BLOCK)
        return mxm_fail(MXM_ERR_INVALID_ARG, "%s: block_rows=%d; supported: 1, 128", fn, block_rows);
    if (scales_transposed && block_rows != 1)
        return mxm_fail(MXM_ERR_INVALID_ARG, "%s: transposed scales need block_rows == 1", fn);
    const int64_t cb = mxm_ceil_div(cols, MXM_FP8_BLOCK);
    const int nt = nthreads_for(rows * cols, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            const int64_t b = c / MXM_FP8_BLOCK;
            const float s = scales_transposed ? scales[b * rows + r]
                                              : scales[(r / block_rows) * cb + b];
            const float v = mxm_e4m3_decode(q[r * cols + c]) * s;
            if (out_dtype == MXM_DT_F32)
                ((float *)out)[r * cols + c] = v;
            else
                ((uint16_t *)out)[r * cols + c] = mxm_bf16_rne(v);
        }
    }
    return MXM_OK;
}
