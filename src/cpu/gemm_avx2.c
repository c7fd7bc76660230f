/* AVX2+FMA expert-GEMM kernels (placeholder: uses the reference until implemented). */
#include "cpu/cpu_kernels.h"

void mxm_cpu_gemm_init_avx2(mxm_cpu_kernels *k) { (void)k; }
