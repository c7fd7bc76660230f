/* Expert-parallel layer benchmark, one process per GPU (scripts/ep-launch.sh N build/bench_ep ...).
 *
 * Each rank, in the same run:
 *  - NCCL all-reduce bus bandwidth (sum of 256 MiB f32; busbw = 2 (N-1)/N bytes / t, the
 *    nccl-tests definition): the ceiling the all-to-all is reported against;
 *  - the all-to-all bus bandwidth (ncclSend/ncclRecv to every peer in one group, equal
 *    messages; busbw = (N-1)/N N bytes-per-peer / t) at the message size of the layer's dispatch
 *    for each T, and at 64 MiB per rank;
 *  - the EP layer (mxm_ep_forward: route, dispatch of MXFP8 rows, local experts, return,
 *    combine, shared expert) at T tokens per rank, beside the single-GPU layer with the same
 *    local experts (mxm_moe_forward with the rank's slice on its own T tokens: the compute
 *    without communication).
 * Rank 0 prints the table (the median over iterations of the slowest rank) and writes JSON.
 * Weights are constant codes (the timing does not depend on their values); inputs random. */
#include <cuda_runtime.h>
#include <getopt.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mxmoe.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "rank %d: %s:%d %s: %s\n", rank, __FILE__, __LINE__, #call,            \
                    cudaGetErrorString(e_));                                                       \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define NK(call)                                                                                   \
    do {                                                                                           \
        ncclResult_t r_ = (call);                                                                  \
        if (r_ != ncclSuccess) {                                                                   \
            fprintf(stderr, "rank %d: %s:%d %s: %s\n", rank, __FILE__, __LINE__, #call,            \
                    ncclGetErrorString(r_));                                                       \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define MX(call)                                                                                   \
    do {                                                                                           \
        mxm_status s_ = (call);                                                                    \
        if (s_) {                                                                                  \
            fprintf(stderr, "rank %d: %s: %s\n", rank, #call, mxm_last_error());                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static int rank, world;
static ncclComm_t comm;
static cudaStream_t stream;
static int iters = 20;

static int cmp_f(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median over iterations of the slowest rank's time (ms) of fn(arg). */
static float time_ms(void (*fn)(void *), void *arg) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float *t = calloc((size_t)iters, sizeof *t), *dev;
    CK(cudaMalloc((void **)&dev, 4));
    for (int i = 0; i < 3; i++)
        fn(arg);
    for (int i = 0; i < iters; i++) {
        CK(cudaStreamSynchronize(stream));
        NK(ncclAllReduce(dev, dev, 1, ncclFloat32, ncclSum, comm, stream)); /* line the ranks up */
        CK(cudaEventRecord(a, stream));
        fn(arg);
        CK(cudaEventRecord(b, stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&t[i], a, b));
        CK(cudaMemcpy(dev, &t[i], 4, cudaMemcpyHostToDevice));
        NK(ncclAllReduce(dev, dev, 1, ncclFloat32, ncclMax, comm, stream));
        CK(cudaMemcpyAsync(&t[i], dev, 4, cudaMemcpyDeviceToHost, stream));
        CK(cudaStreamSynchronize(stream));
    }
    qsort(t, (size_t)iters, sizeof *t, cmp_f);
    const float m = t[iters / 2];
    free(t);
    cudaFree(dev);
    cudaEventDestroy(a), cudaEventDestroy(b);
    return m;
}

typedef struct a2a_arg {
    char *send, *recv;
    size_t per_peer;
} a2a_arg;

static void run_a2a(void *p) {
    const a2a_arg *a = p;
    NK(ncclGroupStart());
    for (int r = 0; r < world; r++) {
        NK(ncclSend(a->send + r * a->per_peer, a->per_peer, ncclUint8, r, comm, stream));
        NK(ncclRecv(a->recv + r * a->per_peer, a->per_peer, ncclUint8, r, comm, stream));
    }
    NK(ncclGroupEnd());
}

typedef struct ar_arg {
    float *buf;
    size_t n;
} ar_arg;

static void run_allreduce(void *p) {
    const ar_arg *a = p;
    NK(ncclAllReduce(a->buf, a->buf, a->n, ncclFloat32, ncclSum, comm, stream));
}

typedef struct layer_arg {
    mxm_ep_plan *ep;
    mxm_moe_plan *one;
    void *ws;
    int64_t wsb;
    mxm_moe_weights w;
    mxm_moe_inputs in;
    mxm_moe_outputs out;
} layer_arg;

static void run_ep(void *p) {
    layer_arg *a = p;
    MX(mxm_ep_forward(a->ep, &a->w, &a->in, &a->out, stream));
}

static void run_one(void *p) {
    layer_arg *a = p;
    if (a->in.num_tokens)
        MX(mxm_moe_forward(a->one, &a->w, &a->in, &a->out, a->ws, a->wsb, stream));
}

static double a2a_busbw(size_t per_peer, float ms) {
    return (double)per_peer * (world - 1) / (ms * 1e-3) / 1e9;
}

static void fill_random_bf16(uint16_t *x, int64_t n, unsigned seed) {
    srand(seed);
    for (int64_t i = 0; i < n; i++)
        x[i] = mxm_bf16_from_f32(((float)rand() / RAND_MAX - 0.5f) * 4.0f);
}

int main(int argc, char **argv) {
    const char *er = getenv("MXM_EP_RANK"), *ew = getenv("MXM_EP_WORLD"),
               *id_file = getenv("MXM_EP_ID_FILE");
    const char *tokens_arg = "1,64,4096", *json_path = "bench/results/ep.json", *shape = "dsv3";
    static const struct option opts[] = {
        {"tokens", required_argument, 0, 't'}, {"iters", required_argument, 0, 'i'},
        {"json", required_argument, 0, 'j'},   {"shape", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (c == 't')
            tokens_arg = optarg;
        else if (c == 'i')
            iters = atoi(optarg) > 0 ? atoi(optarg) : 1;
        else if (c == 'j')
            json_path = optarg;
        else if (c == 's')
            shape = optarg;
        else {
            printf("usage: scripts/ep-launch.sh N build/bench_ep [--shape dsv3|small] [--tokens "
                   "1,64,4096] "
                   "[--iters 20] [--json FILE]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (!er || !ew || !id_file) {
        fprintf(stderr,
                "bench_ep: run it through scripts/ep-launch.sh N (sets MXM_EP_RANK, MXM_EP_WORLD, "
                "MXM_EP_ID_FILE)\n");
        return 2;
    }
    rank = atoi(er), world = atoi(ew);
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < world) {
        if (rank == 0)
            printf("bench_ep: %d ranks need %d GPUs, found %d: skipped\n", world, world, ndev);
        return 77;
    }
    CK(cudaSetDevice(rank));
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ncclUniqueId id;
    if (rank == 0) {
        NK(ncclGetUniqueId(&id));
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", id_file);
        FILE *f = fopen(tmp, "wb");
        if (!f || fwrite(&id, sizeof id, 1, f) != 1 || fclose(f) != 0 ||
            rename(tmp, id_file) != 0) {
            fprintf(stderr, "bench_ep: cannot write %s\n", id_file);
            return 1;
        }
    } else {
        for (int i = 0;; i++) {
            FILE *f = fopen(id_file, "rb");
            if (f) {
                const size_t n = fread(&id, sizeof id, 1, f);
                fclose(f);
                if (n == 1) break;
            }
            if (i > 12000) {
                fprintf(stderr, "bench_ep: no id in %s\n", id_file);
                return 1;
            }
            usleep(10000);
        }
    }
    NK(ncclCommInitRank(&comm, world, id, rank));
    mxm_ep_group *g = NULL;
    MX(mxm_ep_group_create(comm, &g));

    /* the layer */
    mxm_moe_config cfg;
    mxm_moe_config_default(&cfg);
    if (strcmp(shape, "small") == 0) {
        cfg.hidden_size = 1024, cfg.intermediate_size = 512, cfg.num_experts = 32, cfg.top_k = 4;
        cfg.n_group = 4, cfg.topk_group = 2, cfg.shared_intermediate_size = 512;
    } else { /* DeepSeek-V3 */
        cfg.hidden_size = 7168, cfg.intermediate_size = 2048, cfg.num_experts = 256, cfg.top_k = 8;
        cfg.n_group = 8, cfg.topk_group = 4, cfg.shared_intermediate_size = 2048;
    }
    cfg.routing_method = MXM_ROUTE_DEEPSEEK_V3, cfg.routed_scaling_factor = 2.5f;
    cfg.backend = MXM_BACKEND_CUDA, cfg.device = rank;
    const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, E = cfg.num_experts,
                  K = cfg.top_k;
    int32_t off, cnt;
    MX(mxm_ep_expert_slice((int32_t)E, world, rank, &off, &cnt));
    cfg.local_expert_offset = off, cfg.local_num_experts = cnt;

    int64_t tokens[16], nt = 0, tmax = 1;
    for (const char *s = tokens_arg; *s && nt < 16;) {
        tokens[nt] = atoll(s);
        if (tokens[nt] > tmax) tmax = tokens[nt];
        nt++;
        s = strchr(s, ',');
        if (!s) break;
        s++;
    }

    /* constant MXFP8 weights: codes 0x30 (0.5), scales 2^-7 */
    mxm_expert_weights *ex = calloc((size_t)cnt + 1, sizeof *ex);
    const int64_t w13b = 2 * I * H, w2b = H * I;
    for (int32_t e = 0; e <= cnt; e++) {
        void *p[4];
        const int64_t b[4] = {w13b, w13b / 32, w2b, w2b / 32};
        for (int j = 0; j < 4; j++) {
            CK(cudaMalloc(&p[j], (size_t)b[j]));
            CK(cudaMemset(p[j], j % 2 ? 127 - 7 : 0x30, (size_t)b[j]));
        }
        ex[e] = (mxm_expert_weights){p[0], p[1], p[2], p[3]};
    }
    mxm_ep_plan *ep = NULL;
    MX(mxm_ep_plan_create(g, &cfg, tmax, &ep));
    mxm_moe_config one_cfg = cfg;
    if (cnt == 0)
        one_cfg.local_num_experts = 1, one_cfg.local_expert_offset = 0; /* nothing to compare */
    mxm_moe_plan *one = NULL;
    MX(mxm_moe_plan_create(&one_cfg, tmax, &one));
    layer_arg la = {.ep = ep, .one = one, .wsb = mxm_moe_plan_workspace_size(one)};
    CK(cudaMalloc(&la.ws, (size_t)la.wsb));
    la.w = (mxm_moe_weights){ex, &ex[cnt], NULL, NULL, NULL};
    uint16_t *hx = malloc((size_t)(tmax * H) * 2);
    float *hl = malloc((size_t)(tmax * E) * 4);
    fill_random_bf16(hx, tmax * H, 1234u + (unsigned)rank);
    for (int64_t i = 0; i < tmax * E; i++)
        hl[i] = ((float)rand() / RAND_MAX - 0.5f) * 4.0f;
    void *x, *lg, *out;
    CK(cudaMalloc(&x, (size_t)(tmax * H) * 2));
    CK(cudaMalloc(&lg, (size_t)(tmax * E) * 4));
    CK(cudaMalloc(&out, (size_t)(tmax * H) * 2));
    CK(cudaMemcpy(x, hx, (size_t)(tmax * H) * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(lg, hl, (size_t)(tmax * E) * 4, cudaMemcpyHostToDevice));

    /* ceilings: all-reduce and all-to-all at 64 MiB per rank */
    ar_arg ar = {.n = (size_t)64 << 20};
    CK(cudaMalloc((void **)&ar.buf, ar.n * 4));
    CK(cudaMemset(ar.buf, 0, ar.n * 4));
    const float ar_ms = time_ms(run_allreduce, &ar);
    const double ar_bus = 2.0 * (world - 1) / world * (double)ar.n * 4 / (ar_ms * 1e-3) / 1e9;
    a2a_arg big = {.per_peer = ((size_t)64 << 20) / (size_t)world};
    CK(cudaMalloc((void **)&big.send, big.per_peer * (size_t)world));
    CK(cudaMalloc((void **)&big.recv, big.per_peer * (size_t)world));
    const float big_ms = time_ms(run_a2a, &big);
    FILE *js = NULL;
    if (rank == 0) {
        printf("bench_ep: %d ranks, %s, shape %s (H %lld, I %lld, E %lld, K %lld), %d local "
               "experts on rank 0\n",
               world, mxm_device_name(), shape, (long long)H, (long long)I, (long long)E,
               (long long)K, cnt);
        printf("NCCL all-reduce 256 MiB: %.3f ms, busbw %.1f GB/s\n", ar_ms, ar_bus);
        printf("all-to-all 64 MiB per rank: %.3f ms, busbw %.1f GB/s\n", big_ms,
               a2a_busbw(big.per_peer, big_ms));
        printf("%8s %12s %12s %14s %12s %12s\n", "T/rank", "ep_ms", "1gpu_ms", "dispatch_MB",
               "a2a_ms", "a2a_GB/s");
        js = fopen(json_path, "w");
        if (js)
            fprintf(js,
                    "{\"world\": %d, \"device\": \"%s\", \"shape\": \"%s\", "
                    "\"allreduce_busbw_GBps\": %.2f, "
                    "\"a2a_64MiB_busbw_GBps\": %.2f, \"rows\": [",
                    world, mxm_device_name(), shape, ar_bus, a2a_busbw(big.per_peer, big_ms));
    }
    for (int64_t i = 0; i < nt; i++) {
        const int64_t T = tokens[i];
        la.in = (mxm_moe_inputs){.num_tokens = T,
                                 .x = x,
                                 .x_dtype = MXM_DT_BF16,
                                 .router_logits = lg,
                                 .logits_dtype = MXM_DT_F32};
        la.out = (mxm_moe_outputs){.out = out, .out_dtype = MXM_DT_BF16};
        const float ep_ms = time_ms(run_ep, &la);
        const float one_ms = time_ms(run_one, &la);
        /* the dispatch's size: T K rows of H codes + H/32 scales + a 4-byte id, spread over the
         * ranks */
        const int64_t row = H + H / 32 + 4, bytes = T * K * row;
        a2a_arg a2 = {.per_peer = (size_t)((bytes + world - 1) / world)};
        CK(cudaMalloc((void **)&a2.send, a2.per_peer * (size_t)world + 1));
        CK(cudaMalloc((void **)&a2.recv, a2.per_peer * (size_t)world + 1));
        const float a2_ms = time_ms(run_a2a, &a2);
        cudaFree(a2.send), cudaFree(a2.recv);
        if (rank == 0) {
            printf("%8lld %12.3f %12.3f %14.2f %12.3f %12.1f\n", (long long)T, ep_ms, one_ms,
                   bytes / 1e6, a2_ms, a2a_busbw(a2.per_peer, a2_ms));
            if (js)
                fprintf(
                    js,
                    "%s{\"tokens_per_rank\": %lld, \"ep_ms\": %.4f, \"single_gpu_local_ms\": %.4f, "
                    "\"dispatch_bytes\": %lld, \"a2a_ms\": %.4f, \"a2a_busbw_GBps\": %.2f}",
                    i ? ", " : "", (long long)T, ep_ms, one_ms, (long long)bytes, a2_ms,
                    a2a_busbw(a2.per_peer, a2_ms));
        }
    }
    if (js) {
        fprintf(js, "]}\n");
        fclose(js);
        printf("wrote %s\n", json_path);
    }
    mxm_ep_plan_destroy(ep);
    mxm_moe_plan_destroy(one);
    mxm_ep_group_destroy(g);
    ncclCommDestroy(comm);
    return 0;
}
