/* Device-side checks for test_cuda (linked into it): the device's E4M3 conversions (the hardware
 * converter on sm_89+, src/formats/formats.h) against their integer twins, over every fp32 bit
 * pattern and every code. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "formats/formats.h"

__global__ void e4m3_encode_check(unsigned long long *bad, unsigned int *first) {
    const uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32); i += step) {
        const float x = mxm_bits_f32((uint32_t)i);
        if (mxm_e4m3_rne_sat(x) != mxm_e4m3_rne_sat_ref(x)) {
            atomicAdd(bad, 1ull);
            atomicMin(first, (unsigned int)i);
        }
    }
}

/* Codes whose decoded value differs from the twin's (bit for bit; NaN codes: both NaN). */
__global__ void e4m3_decode_check(unsigned long long *bad, unsigned int *first) {
    const uint8_t c = (uint8_t)threadIdx.x;
    const float d = mxm_e4m3_decode(c), r = mxm_e4m3_decode_ref(c);
    const bool same = (d != d && r != r) || mxm_f32_bits(d) == mxm_f32_bits(r);
    if (!same) {
        atomicAdd(bad, 1ull);
        atomicMin(first, (unsigned int)c);
    }
}

/* Mismatches of the encoder (over all 2^32 inputs) and the decoder (256 codes); the first
 * mismatching input of each in first[0..1] (0xFFFFFFFF: none). -1 on a CUDA error. */
extern "C" long long mxm_test_e4m3_device_mismatches(unsigned int first[2]) {
    unsigned long long *bad = NULL;
    unsigned int *fst = NULL;
    long long total = -1;
    if (cudaMalloc(&bad, 2 * sizeof *bad) != cudaSuccess || cudaMalloc(&fst, 2 * sizeof *fst) != cudaSuccess) goto done;
    if (cudaMemset(bad, 0, 2 * sizeof *bad) != cudaSuccess || cudaMemset(fst, 0xFF, 2 * sizeof *fst) != cudaSuccess)
        goto done;
    e4m3_encode_check<<<4096, 256>>>(bad, fst);
    e4m3_decode_check<<<1, 256>>>(bad + 1, fst + 1);
    {
        unsigned long long h[2];
        if (cudaMemcpy(h, bad, sizeof h, cudaMemcpyDeviceToHost) != cudaSuccess ||
            cudaMemcpy(first, fst, 2 * sizeof *fst, cudaMemcpyDeviceToHost) != cudaSuccess)
            goto done;
        total = (long long)(h[0] + h[1]);
    }
done:
    cudaFree(bad);
    cudaFree(fst);
    return total;
}
