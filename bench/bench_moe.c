/* The CPU (or CUDA) MoE layer benchmark: bench_moe [shapes] [tokens] [routing] [json].
 * Same code as `mxmoe bench` (tools/moebench.c). */
#include <stdlib.h>

#include "moebench.h"

int main(int argc, char **argv) {
    mb_options o = {argc > 1 ? argv[1] : "nano,qwen3,dsv3",
                    argc > 2 ? argv[2] : "1,4,16,64,256,1024,4096",
                    argc > 3 ? argv[3] : "both",
                    0,
                    5,
                    MXM_KERNELS_AUTO,
                    MXM_BACKEND_CPU,
                    argc > 4 ? argv[4] : "bench/results/moe_cpu.json",
                    0,
                    MXM_WFMT_MXFP8,
                    MXM_ACT_QUANT_MXFP8,
                    MXM_PROFILE_TRTLLM,
                    0};
    return mb_bench(&o, stdout) ? 1 : 0;
}
