/* AVX2+FMA+F16C MXFP8 row kernels (placeholder: uses the reference until implemented). */
#include "cpu/cpu_kernels.h"

void mxm_cpu_quant_init_avx2(mxm_cpu_kernels *k) { (void)k; }
