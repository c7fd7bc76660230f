// Expert parallelism over NCCL: the layer across the ranks of a communicator, one GPU each.
//
// A forward on rank r (everything on the caller's stream):
//   1. quantize the rank's tokens to MXFP8 codes + E8M0 scales (the rule the single-GPU layer
//      applies), route them (the same per-token code as the layer, route_core.h)
//   2. ids to the host (sync 1), dispatch plan there (mxm_ep_dispatch_plan, the function the
//      CPU tests check), permutation to the device, gather of the send rows
//   3. row counts exchanged (ncclSend/ncclRecv of one int64 per peer), to the host (sync 2)
//   4. codes, scales and expert ids of the rows sent to their experts' ranks (one NCCL group)
//   5. local experts on the received rows: mxm_moe_forward with the CUDA backend, caller ids,
//      top_k 1, weight 1 (its output row is the expert's y, returned as bf16 in the trtllm
//      profile, where y is already bf16, f32 in the exact profile)
//   6. the shared expert on the rank's own tokens (a one-expert layer on the same codes)
//   7. expert rows sent back to their senders (one NCCL group), combined there in (t, k)
//      order with the routing weights, which never leave the rank, + the shared expert.
// Device memory: one arena allocated at plan time, sized for the worst case (every rank sends
// every row to this one). Any failure inside a forward leaves the peers inside NCCL calls: the
// caller must treat it as fatal for the group (as for any NCCL program).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda/common.cuh"
extern "C" {
#include "route/route.h"
}
#include "route/route_core.h"

#define EP_CUDA(call) MXM_CUDA_TRY(call)

#define EP_NCCL(call)                                                                              \
    do {                                                                                           \
        ncclResult_t r_ = (call);                                                                  \
        if (r_ != ncclSuccess)                                                                     \
            return mxm_fail(MXM_ERR_CUDA, "%s:%d: %s: NCCL: %s", __FILE__, __LINE__, #call,        \
                            ncclGetErrorString(r_));                                               \
    } while (0)

#define EP_MAX_WORLD 4096

struct mxm_ep_group {
    ncclComm_t comm;
    int owned;
    int32_t rank, size, device;
};

// ---- groups
// ---------------------------------------------------------------------------------------

extern "C" mxm_status mxm_ep_group_create(void *comm, mxm_ep_group **out) {
    if (!out) return mxm_fail(MXM_ERR_NULL, "mxm_ep_group_create: group output pointer is NULL");
    *out = NULL;
    if (!comm) return mxm_fail(MXM_ERR_NULL, "mxm_ep_group_create: nccl_comm is NULL");
    ncclComm_t c = (ncclComm_t)comm;
    int rank = 0, size = 0, dev = 0, cur = 0;
    EP_NCCL(ncclCommUserRank(c, &rank));
    EP_NCCL(ncclCommCount(c, &size));
    EP_NCCL(ncclCommCuDevice(c, &dev));
    EP_CUDA(cudaGetDevice(&cur));
    if (cur != dev)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_ep_group_create: the current device %d is not the comm's device %d",
                        cur, dev);
    if (size > EP_MAX_WORLD)
        return mxm_fail(MXM_ERR_UNSUPPORTED, "mxm_ep_group_create: %d ranks (at most %d)", size,
                        EP_MAX_WORLD);
    mxm_ep_group *g = (mxm_ep_group *)calloc(1, sizeof *g);
    if (!g) return mxm_fail(MXM_ERR_NOMEM, "mxm_ep_group_create: out of memory");
    g->comm = c, g->rank = rank, g->size = size, g->device = dev;
    *out = g;
    return MXM_OK;
}

// Waits for the unique id file of rank 0 (written to a temporary and renamed, so it is whole).
static mxm_status read_id(const char *path, ncclUniqueId *id) {
    for (int i = 0; i < 12000; i++) { // 120 s
        FILE *f = fopen(path, "rb");
        if (f) {
            const size_t n = fread(id, 1, sizeof *id, f);
            fclose(f);
            if (n == sizeof *id) return MXM_OK;
        }
        const struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return mxm_fail(MXM_ERR_IO,
                    "mxm_ep_group_create_local: no NCCL id in %s after 120 s (is rank 0 running?)",
                    path);
}

extern "C" mxm_status mxm_ep_group_create_local(int32_t world, int32_t rank, const char *id_file,
                                                mxm_ep_group **out) {
    if (!out)
        return mxm_fail(MXM_ERR_NULL, "mxm_ep_group_create_local: group output pointer is NULL");
    *out = NULL;
    if (!id_file) return mxm_fail(MXM_ERR_NULL, "mxm_ep_group_create_local: id_file is NULL");
    if (world < 1 || world > EP_MAX_WORLD || rank < 0 || rank >= world)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_ep_group_create_local: world_size=%d, rank=%d",
                        world, rank);
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        cudaGetLastError();
        return mxm_fail(MXM_ERR_NO_DEVICE, "mxm_ep_group_create_local: no CUDA device is present");
    }
    EP_CUDA(cudaSetDevice(rank % ndev));
    ncclUniqueId id;
    if (rank == 0) {
        EP_NCCL(ncclGetUniqueId(&id));
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", id_file, (long)getpid());
        FILE *f = fopen(tmp, "wb");
        if (!f) return mxm_fail(MXM_ERR_IO, "mxm_ep_group_create_local: cannot write %s", tmp);
        const size_t n = fwrite(&id, 1, sizeof id, f);
        if (fclose(f) != 0 || n != sizeof id || rename(tmp, id_file) != 0) {
            remove(tmp);
            return mxm_fail(MXM_ERR_IO, "mxm_ep_group_create_local: cannot write %s", id_file);
        }
    } else {
        mxm_status st = read_id(id_file, &id);
        if (st) return st;
    }
    ncclComm_t comm;
    EP_NCCL(ncclCommInitRank(&comm, world, id, rank));
    mxm_status st = mxm_ep_group_create(comm, out);
    if (st) {
        ncclCommDestroy(comm);
        return st;
    }
    (*out)->owned = 1;
    return MXM_OK;
}

extern "C" void mxm_ep_group_destroy(mxm_ep_group *g) {
    if (!g) return;
    if (g->owned) ncclCommDestroy(g->comm);
    free(g);
}
extern "C" int32_t mxm_ep_group_rank(const mxm_ep_group *g) {
    return g ? g->rank : -1;
}
extern "C" int32_t mxm_ep_group_size(const mxm_ep_group *g) {
    return g ? g->size : 0;
}

// ---- kernels (plain launches: they do not take part in the layer's programmatic dependent launch)

// One thread per 32-block: MXFP8 quantization exactly as the host rule (quant_ref.c).
__global__ void ep_quantize_kernel(const void *x, int32_t dtype, int64_t nblocks, uint8_t *q,
                                   uint8_t *s, int rule) {
    const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    float v[MXM_MX_BLOCK];
    float amax = 0.0f;
    int special = 0;
    for (int i = 0; i < MXM_MX_BLOCK; i++) {
        const int64_t j = b * MXM_MX_BLOCK + i;
        v[i] =
            dtype == MXM_DT_F32 ? ((const float *)x)[j] : mxm_bf16_decode(((const uint16_t *)x)[j]);
        const uint32_t a = mxm_f32_bits(v[i]) & 0x7FFFFFFFu;
        if (a >= 0x7F800000u) special = 1;
        const float m = mxm_bits_f32(a);
        if (m > amax) amax = m;
    }
    uint8_t *qb = q + b * MXM_MX_BLOCK;
    if (special) {
        s[b] = MXM_E8M0_NAN;
        for (int i = 0; i < MXM_MX_BLOCK; i++)
            qb[i] = MXM_E4M3_NAN;
        return;
    }
    const uint8_t sb = mxm_mx_scale_byte(amax, rule);
    s[b] = sb;
    const float inv = mxm_e8m0_inverse(sb);
    for (int i = 0; i < MXM_MX_BLOCK; i++)
        qb[i] =
            sb == 0 ? (uint8_t)((mxm_f32_bits(v[i]) >> 24) & 0x80) : mxm_e4m3_rne_sat(v[i] * inv);
}

__global__ void ep_route_kernel(int64_t T, mxm_route_params rp, const void *logits,
                                int32_t logits_dtype, const void *bias, int32_t bias_dtype,
                                int32_t *ids, float *wts, char *scratch, int64_t stride) {
    const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= T) return;
    mxm_route_token(&rp, logits, logits_dtype, bias, bias_dtype, t, ids, wts, scratch + t * stride);
}

// Send row j <- token send_src[j] / K: codes, scales and the row's global expert id. One block per
// row.
__global__ void ep_gather_kernel(const uint8_t *xq, const uint8_t *xs, const int32_t *ids,
                                 const int32_t *send_src, int32_t K, int64_t H, int vec,
                                 uint8_t *sq, uint8_t *ss, int32_t *sid) {
    const int64_t j = blockIdx.x;
    const int32_t src = send_src[j];
    const int64_t t = src / K;
    if (vec) { // xq 16-byte aligned; H % 32 == 0 keeps every row so
        const uint4 *from = (const uint4 *)(xq + t * H);
        uint4 *to = (uint4 *)(sq + j * H);
        for (int64_t i = threadIdx.x; i < H / 16; i += blockDim.x)
            to[i] = from[i];
    } else {
        for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
            sq[j * H + i] = xq[t * H + i];
    }
    for (int64_t i = threadIdx.x; i < H / 32; i += blockDim.x)
        ss[j * (H / 32) + i] = xs[t * (H / 32) + i];
    if (threadIdx.x == 0) sid[j] = ids[src];
}

__global__ void ep_fill_kernel(float *p, int64_t n, float v) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) p[i] = v;
}

__device__ __forceinline__ float ep_load(const void *p, int32_t dtype, int64_t i) {
    return dtype == MXM_DT_F32 ? ((const float *)p)[i]
                               : __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

__device__ __forceinline__ void ep_store(void *p, int32_t dtype, int64_t i, float v) {
    if (dtype == MXM_DT_F32)
        ((float *)p)[i] = v;
    else
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
}

// out[t] = sum_k w[t,k] y[pos[t,k]] in k order from 0 (+ shared): the expression of the
// single-GPU combine (src/cuda/combine.cu), so it contracts to the same fused multiply-adds.
__global__ void ep_combine_kernel(int64_t H, int32_t K, const float *wts, const int32_t *pos,
                                  const void *y, int32_t y_dtype, const float *shared, void *out,
                                  void *out_routed, int32_t out_dtype) {
    const int64_t t = blockIdx.x, h = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (h >= H) return;
    float acc = 0.0f;
    for (int k = 0; k < K; k++) {
        const float w = wts[t * K + k];
        acc += w * ep_load(y, y_dtype, (int64_t)pos[t * K + k] * H + h);
    }
    if (out_routed) ep_store(out_routed, out_dtype, t * H + h, acc);
    if (shared) acc += shared[t * H + h];
    ep_store(out, out_dtype, t * H + h, acc);
}

// ---- the plan ---------------------------------------------------------------------------------

struct mxm_ep_plan {
    mxm_ep_group *g;
    mxm_moe_config cfg; // global, device = the group's
    int32_t N, K, H, E_loc;
    int32_t *ro;        // [N + 1] rank offsets (host)
    int64_t Tmax, Rmax; // tokens per rank, rows received at most
    int32_t ret_dt;
    int64_t ret_sz;
    mxm_route_params rp;
    int64_t route_stride;
    mxm_moe_plan *eplan, *splan;
    int64_t ewsb, swsb;
    // device arena
    char *arena;
    int64_t arena_bytes;
    uint8_t *xq, *xs, *sq, *ss, *rq, *rs;
    int32_t *ids, *send_src, *pos, *sid, *rid, *zeros;
    float *wts, *ones, *ysh;
    char *route_scratch, *ews, *sws;
    void *yret, *yhome;
    int64_t *cnt_dev; // [2N]: sent, received
    // pinned host
    int32_t *h_ids, *h_send_src, *h_pos;
    int64_t *h_cnt, *h_send_off; // h_cnt [2N]: sent, received
    int64_t last_sent, last_recv;
};

// Appends n bytes (256-byte aligned) to the arena layout; -1 on overflow.
static int64_t take(int64_t *cur, int64_t n) {
    if (*cur < 0 || n < 0) return *cur = -1;
    const int64_t off = mxm_align_up(*cur, 256);
    if (!mxm_add_i64(off, n, cur)) return *cur = -1;
    return off;
}

extern "C" void mxm_ep_plan_destroy(mxm_ep_plan *p) {
    if (!p) return;
    mxm_moe_plan_destroy(p->eplan);
    mxm_moe_plan_destroy(p->splan);
    cudaFree(p->arena);
    cudaFreeHost(p->h_ids);
    free(p->ro);
    free(p);
}

static mxm_status check_cfg(const mxm_moe_config *cfg) {
    mxm_moe_config c = *cfg;
    c.local_expert_offset = 0, c.local_num_experts = 0; // EP: 0 means "no experts", checked below
    mxm_status st = mxm_moe_config_validate(&c);
    if (st) return st;
    if (cfg->backend != MXM_BACKEND_CUDA)
        return mxm_fail(MXM_ERR_UNSUPPORTED, "mxm_ep_plan_create: backend must be cuda");
    if (cfg->weight_format != MXM_WFMT_MXFP8 || cfg->act_quant != MXM_ACT_QUANT_MXFP8)
        return mxm_fail(MXM_ERR_UNSUPPORTED,
                        "mxm_ep_plan_create: expert parallelism sends MXFP8 rows; supported: "
                        "weight_format mxfp8 with act_quant mxfp8 (got %s, act_quant %d)",
                        mxm_weight_format_name(cfg->weight_format), cfg->act_quant);
    if (cfg->local_num_experts < 0 || cfg->local_expert_offset < 0 ||
        (int64_t)cfg->local_expert_offset + cfg->local_num_experts > cfg->num_experts)
        return mxm_fail(MXM_ERR_SHAPE,
                        "mxm_ep_plan_create: slice [%d, %d + %d) is outside the %d experts",
                        cfg->local_expert_offset, cfg->local_expert_offset, cfg->local_num_experts,
                        cfg->num_experts);
    return MXM_OK;
}

// Gathers every rank's slice and checks that they tile [0, E) in rank order.
static mxm_status exchange_slices(mxm_ep_plan *p, int32_t *dev_tmp) {
    const int32_t mine[2] = {p->cfg.local_expert_offset, p->cfg.local_num_experts};
    EP_CUDA(cudaMemcpy(dev_tmp, mine, sizeof mine, cudaMemcpyHostToDevice));
    EP_NCCL(ncclAllGather(dev_tmp, dev_tmp + 2, 2, ncclInt32, p->g->comm, 0));
    EP_CUDA(cudaStreamSynchronize(0));
    int32_t *all = (int32_t *)malloc(sizeof(int32_t) * 2 * (size_t)p->N);
    if (!all) return mxm_fail(MXM_ERR_NOMEM, "mxm_ep_plan_create: out of memory");
    cudaError_t e =
        cudaMemcpy(all, dev_tmp + 2, sizeof(int32_t) * 2 * (size_t)p->N, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        free(all);
        return mxm_fail(MXM_ERR_CUDA, "mxm_ep_plan_create: %s", cudaGetErrorString(e));
    }
    p->ro[0] = 0;
    for (int32_t r = 0; r < p->N; r++) {
        if (all[2 * r] != p->ro[r]) {
            const int32_t got = all[2 * r];
            free(all);
            return mxm_fail(
                MXM_ERR_SHAPE,
                "mxm_ep_plan_create: rank %d's experts start at %d, expected %d (slices "
                "must be contiguous, in rank order)",
                r, got, p->ro[r]);
        }
        p->ro[r + 1] = all[2 * r] + all[2 * r + 1];
    }
    free(all);
    if (p->ro[p->N] != p->cfg.num_experts)
        return mxm_fail(MXM_ERR_SHAPE,
                        "mxm_ep_plan_create: the ranks' slices hold %d of the %d experts",
                        p->ro[p->N], p->cfg.num_experts);
    return MXM_OK;
}

static mxm_status plan_build(mxm_ep_plan *p, mxm_ep_group *g, const mxm_moe_config *cfg,
                             int64_t Tmax) {
    int dev = 0;
    EP_CUDA(cudaGetDevice(&dev));
    if (dev != g->device)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_ep_plan_create: current device %d is not the group's %d", dev,
                        g->device);
    p->g = g, p->cfg = *cfg, p->cfg.device = dev;
    p->N = g->size, p->K = cfg->top_k, p->H = cfg->hidden_size, p->E_loc = cfg->local_num_experts;
    p->Tmax = Tmax;
    p->ret_dt = mxm_ep_return_dtype(cfg);
    p->ret_sz = mxm_dtype_size(p->ret_dt);
    p->ro = (int32_t *)malloc(sizeof(int32_t) * ((size_t)p->N + 1));
    if (!p->ro) return mxm_fail(MXM_ERR_NOMEM, "mxm_ep_plan_create: out of memory");
    if (!mxm_mul_i64(Tmax * p->K, p->N, &p->Rmax) || Tmax * p->K > INT32_MAX)
        return mxm_fail(MXM_ERR_OVERFLOW, "mxm_ep_plan_create: max_tokens=%lld is too large",
                        (long long)Tmax);
    mxm_route_params_from_config(&p->cfg, &p->rp);
    int64_t lay[5];
    p->route_stride = mxm_route_layout(&p->rp, lay);

    // local forwards
    mxm_status st;
    if (p->E_loc > 0) {
        mxm_moe_config ec;
        if ((st = mxm_ep_expert_config(&p->cfg, cfg->local_expert_offset, p->E_loc, &ec)))
            return st;
        if ((st = mxm_moe_plan_create(&ec, p->Rmax, &p->eplan)))
            return mxm_fail_context(st, "EP expert plan");
        p->ewsb = mxm_moe_plan_workspace_size(p->eplan);
    }
    if (cfg->shared_intermediate_size) {
        mxm_moe_config sc, whole = p->cfg;
        whole.local_expert_offset = 0, whole.local_num_experts = 0; // a rank may hold no experts
        if ((st = mxm_ep_shared_config(&whole, &sc))) return st;
        if ((st = mxm_moe_plan_create(&sc, Tmax, &p->splan)))
            return mxm_fail_context(st, "EP shared plan");
        p->swsb = mxm_moe_plan_workspace_size(p->splan);
    }

    // arena
    const int64_t H = p->H, S = Tmax * p->K, R = p->Rmax, N = p->N;
    int64_t cur = 0, o[24];
    int i = 0;
    o[i++] = take(&cur, mxm_mul3_i64(Tmax, H, 1));                // xq
    o[i++] = take(&cur, mxm_mul3_i64(Tmax, H / 32, 1));           // xs
    o[i++] = take(&cur, mxm_mul3_i64(S, 4, 1));                   // ids
    o[i++] = take(&cur, mxm_mul3_i64(S, 4, 1));                   // wts
    o[i++] = take(&cur, mxm_mul3_i64(Tmax, p->route_stride, 1));  // route scratch
    o[i++] = take(&cur, mxm_mul3_i64(S, 4, 1));                   // send_src
    o[i++] = take(&cur, mxm_mul3_i64(S, 4, 1));                   // pos
    o[i++] = take(&cur, mxm_mul3_i64(S, H, 1));                   // sq
    o[i++] = take(&cur, mxm_mul3_i64(S, H / 32, 1));              // ss
    o[i++] = take(&cur, mxm_mul3_i64(S, 4, 1));                   // sid
    o[i++] = take(&cur, mxm_mul3_i64(R, H, 1));                   // rq
    o[i++] = take(&cur, mxm_mul3_i64(R, H / 32, 1));              // rs
    o[i++] = take(&cur, mxm_mul3_i64(R, 4, 1));                   // rid
    o[i++] = take(&cur, mxm_mul3_i64(R > Tmax ? R : Tmax, 4, 1)); // ones
    o[i++] = take(&cur, mxm_mul3_i64(Tmax, 4, 1));                // zeros
    o[i++] = take(&cur, mxm_mul3_i64(R, H, p->ret_sz));           // yret
    o[i++] = take(&cur, mxm_mul3_i64(S, H, p->ret_sz));           // yhome
    o[i++] = take(&cur, cfg->shared_intermediate_size ? mxm_mul3_i64(Tmax, H, 4) : 0); // ysh
    o[i++] = take(&cur, mxm_mul3_i64(2 * N + 2 * N, 8, 1)); // counts (+ slice exchange scratch)
    o[i++] = take(&cur, p->ewsb);                           // expert workspace
    o[i++] = take(&cur, p->swsb);                           // shared workspace
    if (cur < 0)
        return mxm_fail(MXM_ERR_OVERFLOW, "mxm_ep_plan_create: device buffers overflow int64");
    p->arena_bytes = cur;
    EP_CUDA(cudaMalloc(&p->arena, (size_t)cur));
    char *a = p->arena;
    i = 0;
    p->xq = (uint8_t *)(a + o[i++]), p->xs = (uint8_t *)(a + o[i++]);
    p->ids = (int32_t *)(a + o[i++]), p->wts = (float *)(a + o[i++]);
    p->route_scratch = a + o[i++];
    p->send_src = (int32_t *)(a + o[i++]), p->pos = (int32_t *)(a + o[i++]);
    p->sq = (uint8_t *)(a + o[i++]), p->ss = (uint8_t *)(a + o[i++]),
    p->sid = (int32_t *)(a + o[i++]);
    p->rq = (uint8_t *)(a + o[i++]), p->rs = (uint8_t *)(a + o[i++]),
    p->rid = (int32_t *)(a + o[i++]);
    p->ones = (float *)(a + o[i++]), p->zeros = (int32_t *)(a + o[i++]);
    p->yret = a + o[i++], p->yhome = a + o[i++], p->ysh = (float *)(a + o[i++]);
    p->cnt_dev = (int64_t *)(a + o[i++]);
    p->ews = a + o[i++], p->sws = a + o[i++];
    const int64_t nones = R > Tmax ? R : Tmax;
    ep_fill_kernel<<<(unsigned)((nones + 255) / 256), 256>>>(p->ones, nones, 1.0f);
    EP_CUDA(cudaGetLastError());
    EP_CUDA(cudaMemset(p->zeros, 0, (size_t)Tmax * 4));

    // pinned host: ids, send_src, pos [S] int32; counts [2N], send offsets [N + 1] int64
    const size_t hb = (size_t)(3 * S) * 4 + (size_t)(2 * N + N + 1) * 8 + 64;
    EP_CUDA(cudaMallocHost((void **)&p->h_ids, hb));
    p->h_send_src = p->h_ids + S, p->h_pos = p->h_send_src + S;
    p->h_cnt = (int64_t *)(void *)((char *)p->h_ids + mxm_align_up((int64_t)(3 * S) * 4, 8));
    p->h_send_off = p->h_cnt + 2 * N;

    return exchange_slices(p, (int32_t *)(void *)(p->cnt_dev + 2 * N));
}

extern "C" mxm_status mxm_ep_plan_create(mxm_ep_group *g, const mxm_moe_config *cfg,
                                         int64_t max_tokens, mxm_ep_plan **out) {
    if (!out) return mxm_fail(MXM_ERR_NULL, "mxm_ep_plan_create: plan output pointer is NULL");
    *out = NULL;
    if (!g || !cfg) return mxm_fail(MXM_ERR_NULL, "mxm_ep_plan_create: group or config is NULL");
    mxm_status st = check_cfg(cfg);
    if (st) return st;
    if (max_tokens < 1 || max_tokens > ((int64_t)1 << 31))
        return mxm_fail(MXM_ERR_SHAPE, "mxm_ep_plan_create: max_tokens=%lld must be in 1..2^31",
                        (long long)max_tokens);
    mxm_ep_plan *p = (mxm_ep_plan *)calloc(1, sizeof *p);
    if (!p) return mxm_fail(MXM_ERR_NOMEM, "mxm_ep_plan_create: out of memory");
    if ((st = plan_build(p, g, cfg, max_tokens))) {
        mxm_ep_plan_destroy(p);
        return st;
    }
    *out = p;
    return MXM_OK;
}

extern "C" int64_t mxm_ep_plan_device_bytes(const mxm_ep_plan *p) {
    return p ? p->arena_bytes : 0;
}

extern "C" mxm_status mxm_ep_plan_last_rows(const mxm_ep_plan *p, int64_t *sent,
                                            int64_t *received) {
    if (!p || !sent || !received)
        return mxm_fail(MXM_ERR_NULL, "mxm_ep_plan_last_rows: NULL argument");
    *sent = p->last_sent, *received = p->last_recv;
    return MXM_OK;
}

// ---- the forward ------------------------------------------------------------------------------

static mxm_status check_forward(const mxm_ep_plan *p, const mxm_moe_weights *w,
                                const mxm_moe_inputs *in, const mxm_moe_outputs *out) {
    if (!p || !w || !in || !out)
        return mxm_fail(MXM_ERR_NULL, "mxm_ep_forward: plan, weights, inputs or outputs is NULL");
    const int64_t T = in->num_tokens;
    if (T < 0 || T > p->Tmax)
        return mxm_fail(
            MXM_ERR_SHAPE,
            "mxm_ep_forward: num_tokens=%lld is outside 0..%lld (the plan's max_tokens)",
            (long long)T, (long long)p->Tmax);
    if (T == 0) return MXM_OK;
    if (!in->x || !out->out) return mxm_fail(MXM_ERR_NULL, "mxm_ep_forward: x or out is NULL");
    if (in->x_dtype != MXM_DT_F32 && in->x_dtype != MXM_DT_BF16 && in->x_dtype != MXM_DT_E4M3)
        return mxm_fail(MXM_ERR_DTYPE, "mxm_ep_forward: x dtype %s; supported: F32, BF16, F8_E4M3",
                        mxm_dtype_name(in->x_dtype));
    if (in->x_dtype == MXM_DT_E4M3 && (!in->x_scale || in->x_scale_transposed))
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_ep_forward: pre-quantized x needs x_scale [T, H/32] (not transposed)");
    if (in->router_logits) {
        if (in->logits_dtype != MXM_DT_F32 && in->logits_dtype != MXM_DT_BF16)
            return mxm_fail(MXM_ERR_DTYPE,
                            "mxm_ep_forward: router_logits dtype %s; supported: F32, BF16",
                            mxm_dtype_name(in->logits_dtype));
        if (in->routing_bias && in->bias_dtype != MXM_DT_F32 && in->bias_dtype != MXM_DT_BF16)
            return mxm_fail(MXM_ERR_DTYPE,
                            "mxm_ep_forward: routing_bias dtype %s; supported: F32, BF16",
                            mxm_dtype_name(in->bias_dtype));
    } else if (!in->topk_ids || !in->topk_weights) {
        return mxm_fail(MXM_ERR_NULL,
                        "mxm_ep_forward: give router_logits, or both topk_ids and topk_weights");
    }
    if (out->out_dtype != MXM_DT_F32 && out->out_dtype != MXM_DT_BF16)
        return mxm_fail(MXM_ERR_DTYPE, "mxm_ep_forward: out dtype %s; supported: F32, BF16",
                        mxm_dtype_name(out->out_dtype));
    return MXM_OK;
}

extern "C" mxm_status mxm_ep_forward(mxm_ep_plan *p, const mxm_moe_weights *w,
                                     const mxm_moe_inputs *in, const mxm_moe_outputs *out,
                                     void *stream) {
    mxm_status st = check_forward(p, w, in, out);
    if (st) return st;
    cudaStream_t s = (cudaStream_t)stream;
    ncclComm_t comm = p->g->comm;
    const int64_t T = in->num_tokens, K = p->K, H = p->H, N = p->N, S = T * K;
    const uint8_t *xq = p->xq, *xs = p->xs;
    const int32_t *ids = p->ids;
    const float *wts = p->wts;

    // 1. quantize, route
    if (T > 0) {
        if (in->x_dtype == MXM_DT_E4M3) {
            xq = (const uint8_t *)in->x, xs = (const uint8_t *)in->x_scale;
        } else {
            const int64_t nb = T * H / 32;
            ep_quantize_kernel<<<(unsigned)((nb + 127) / 128), 128, 0, s>>>(
                in->x, in->x_dtype, nb, p->xq, p->xs, p->cfg.scale_rule);
            EP_CUDA(cudaGetLastError());
        }
        if (in->router_logits) {
            ep_route_kernel<<<(unsigned)((T + 127) / 128), 128, 0, s>>>(
                T, p->rp, in->router_logits, in->logits_dtype, in->routing_bias, in->bias_dtype,
                p->ids, p->wts, p->route_scratch, p->route_stride);
            EP_CUDA(cudaGetLastError());
        } else {
            ids = in->topk_ids, wts = in->topk_weights;
        }
        // 2. ids to the host (sync 1)
        EP_CUDA(cudaMemcpyAsync(p->h_ids, ids, (size_t)S * 4, cudaMemcpyDeviceToHost, s));
        EP_CUDA(cudaStreamSynchronize(s));
    }
    int64_t *h_sent = p->h_cnt, *h_recv = p->h_cnt + N;
    if ((st = mxm_ep_dispatch_plan(p->h_ids, T, (int32_t)K, (int32_t)N, p->ro, h_sent,
                                   p->h_send_off, p->h_send_src, p->h_pos)))
        return mxm_fail_context(st, "mxm_ep_forward (rank %d; the peers are left waiting)",
                                p->g->rank);
    if (T > 0) {
        EP_CUDA(
            cudaMemcpyAsync(p->send_src, p->h_send_src, (size_t)S * 4, cudaMemcpyHostToDevice, s));
        EP_CUDA(cudaMemcpyAsync(p->pos, p->h_pos, (size_t)S * 4, cudaMemcpyHostToDevice, s));
        const int vec = (uintptr_t)xq % 16 == 0;
        ep_gather_kernel<<<(unsigned)S, 128, 0, s>>>(xq, xs, ids, p->send_src, (int32_t)K, H, vec,
                                                     p->sq, p->ss, p->sid);
        EP_CUDA(cudaGetLastError());
    }
    // 3. counts (sync 2)
    EP_CUDA(cudaMemcpyAsync(p->cnt_dev, h_sent, (size_t)N * 8, cudaMemcpyHostToDevice, s));
    EP_NCCL(ncclGroupStart());
    for (int64_t r = 0; r < N; r++) {
        EP_NCCL(ncclSend(p->cnt_dev + r, 1, ncclInt64, (int)r, comm, s));
        EP_NCCL(ncclRecv(p->cnt_dev + N + r, 1, ncclInt64, (int)r, comm, s));
    }
    EP_NCCL(ncclGroupEnd());
    EP_CUDA(cudaMemcpyAsync(h_recv, p->cnt_dev + N, (size_t)N * 8, cudaMemcpyDeviceToHost, s));
    EP_CUDA(cudaStreamSynchronize(s));
    int64_t R = 0;
    for (int64_t r = 0; r < N; r++)
        R += h_recv[r];
    if (R > p->Rmax || (R > 0 && p->E_loc == 0))
        return mxm_fail(MXM_ERR_INTERNAL,
                        "mxm_ep_forward: rank %d receives %lld rows (capacity %lld, %d experts)",
                        p->g->rank, (long long)R, (long long)p->Rmax, p->E_loc);

    // 4. dispatch: codes, scales, expert ids
    const int64_t HS = H / 32;
    EP_NCCL(ncclGroupStart());
    for (int64_t r = 0, roff = 0; r < N; roff += h_recv[r], r++) {
        const int64_t so = p->h_send_off[r], sc = h_sent[r], rc = h_recv[r];
        if (sc) {
            EP_NCCL(ncclSend(p->sq + so * H, (size_t)(sc * H), ncclUint8, (int)r, comm, s));
            EP_NCCL(ncclSend(p->ss + so * HS, (size_t)(sc * HS), ncclUint8, (int)r, comm, s));
            EP_NCCL(ncclSend(p->sid + so, (size_t)sc, ncclInt32, (int)r, comm, s));
        }
        if (rc) {
            EP_NCCL(ncclRecv(p->rq + roff * H, (size_t)(rc * H), ncclUint8, (int)r, comm, s));
            EP_NCCL(ncclRecv(p->rs + roff * HS, (size_t)(rc * HS), ncclUint8, (int)r, comm, s));
            EP_NCCL(ncclRecv(p->rid + roff, (size_t)rc, ncclInt32, (int)r, comm, s));
        }
    }
    EP_NCCL(ncclGroupEnd());

    // 5. local experts on the received rows
    if (R > 0) {
        const mxm_moe_weights we = {w->experts, NULL, w->gemm1_alpha, w->gemm1_beta,
                                    w->gemm1_clamp_limit};
        mxm_moe_inputs ein;
        memset(&ein, 0, sizeof ein);
        ein.num_tokens = R, ein.x = p->rq, ein.x_dtype = MXM_DT_E4M3, ein.x_scale = p->rs;
        ein.topk_ids = p->rid, ein.topk_weights = p->ones;
        mxm_moe_outputs eout;
        memset(&eout, 0, sizeof eout);
        eout.out = p->yret, eout.out_dtype = p->ret_dt;
        if ((st = mxm_moe_forward(p->eplan, &we, &ein, &eout, p->ews, p->ewsb, s)))
            return mxm_fail_context(st, "mxm_ep_forward: local experts");
    }
    // 6. shared expert on the rank's own tokens
    const float *ysh = NULL;
    if (p->splan && T > 0) {
        if (!w->shared)
            return mxm_fail(
                MXM_ERR_NULL,
                "mxm_ep_forward: the config has a shared expert; weights.shared is NULL");
        const mxm_moe_weights ws = {w->shared, NULL, NULL, NULL, NULL};
        mxm_moe_inputs sin;
        memset(&sin, 0, sizeof sin);
        sin.num_tokens = T, sin.x = xq, sin.x_dtype = MXM_DT_E4M3, sin.x_scale = xs;
        sin.topk_ids = p->zeros, sin.topk_weights = p->ones;
        mxm_moe_outputs sout;
        memset(&sout, 0, sizeof sout);
        sout.out = p->ysh, sout.out_dtype = MXM_DT_F32;
        if ((st = mxm_moe_forward(p->splan, &ws, &sin, &sout, p->sws, p->swsb, s)))
            return mxm_fail_context(st, "mxm_ep_forward: shared expert");
        ysh = p->ysh;
    }
    // 7. expert rows back to their senders, combine
    const ncclDataType_t rt = p->ret_dt == MXM_DT_F32 ? ncclFloat32 : ncclBfloat16;
    EP_NCCL(ncclGroupStart());
    for (int64_t r = 0, roff = 0; r < N; roff += h_recv[r], r++) {
        if (h_recv[r])
            EP_NCCL(ncclSend((char *)p->yret + roff * H * p->ret_sz, (size_t)(h_recv[r] * H), rt,
                             (int)r, comm, s));
        if (h_sent[r])
            EP_NCCL(ncclRecv((char *)p->yhome + p->h_send_off[r] * H * p->ret_sz,
                             (size_t)(h_sent[r] * H), rt, (int)r, comm, s));
    }
    EP_NCCL(ncclGroupEnd());
    if (T > 0) {
        const dim3 grid((unsigned)T, (unsigned)((H + 127) / 128));
        ep_combine_kernel<<<grid, 128, 0, s>>>(H, (int32_t)K, wts, p->pos, p->yhome, p->ret_dt, ysh,
                                               out->out, out->out_routed, out->out_dtype);
        EP_CUDA(cudaGetLastError());
        if (out->topk_ids)
            EP_CUDA(
                cudaMemcpyAsync(out->topk_ids, ids, (size_t)S * 4, cudaMemcpyDeviceToDevice, s));
        if (out->topk_weights)
            EP_CUDA(cudaMemcpyAsync(out->topk_weights, wts, (size_t)S * 4, cudaMemcpyDeviceToDevice,
                                    s));
    }
    p->last_sent = S, p->last_recv = R;
    return MXM_OK;
}
