// The CUDA backend: plan (device workspace layout) and forward (the launch sequence).
//   decode: prologue (prepare x + route + permute, one launch) -> SKINNY1 [| MMA1] [-> requant]
//           -> SKINNY2 [| MMA2] -> combine
//   prefill: prepare x -> route (or caller ids) -> permute -> SKINNY1 | MMA1 [-> requant] -> SKINNY2 | MMA2
//           -> combine
// Every launch is on the caller's stream; nothing synchronizes with the host, so a forward can
// be captured into a CUDA graph. Supported: MXFP8 and DeepSeek FP8 (128x128) weights, their
// activation quantization or none (weight-only), both profiles, every activation and layout,
// shared experts, EP slices. The bf16/f32 reference weights run on the CPU backend.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <mutex>

#include "cuda/kernels.cuh"

int mxm_cuda_pdl_enabled() {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("MXM_CUDA_PDL");
        on = !(e && e[0] == '0');
    }
    return on;
}

// The prefill GEMMs of MXFP8 weights (groups over MXM_CUDA_SKINNY_MAX rows) run on gemm_wgmma.cu
// (Hopper wgmma, 128-row m-tiles) when the step averages at least MXM_CUDA_WGMMA_MIN_ROWS rows
// per expert of the whole model (T K / E: what an expert-parallel slice expects under balanced
// routing), else on gemm.cu's 64-row mma.sync tiles, which waste less of a tile on groups of
// 33..127 rows. Stop 23 (H200, both paths in one call, docs/BENCHMARKS.md): wgmma 1.07x faster at
// Nano T = 1024 (48 rows per expert) and 1.75x at the DeepSeek slice's T = 1024 (32 by this
// measure); stop 21 had mma.sync ahead below 64, before the wgmma kernels' stall fixes.
// MXM_CUDA_WGMMA=0/1 forces either path; read at every forward, so one process can run both.
#define MXM_CUDA_WGMMA_MIN_ROWS 32
// DeepSeek FP8 weights take the same rule on their own wgmma kernels (128 x 128 tiles, the
// 128-block scales applied to per-block partial sums): 1.97x / 2.13x faster than the mma.sync
// tiles at the DeepSeek slice's T = 1024 / 4096 (H100, session 25, docs/BENCHMARKS.md).
static bool wgmma_on(const mxm_cuda_args &a) {
    const char *e = getenv("MXM_CUDA_WGMMA");
    if (e && e[0]) return e[0] != '0';
    return (int64_t)a.T * a.K >= (int64_t)MXM_CUDA_WGMMA_MIN_ROWS * a.E;
}

// Routing from logits on the device: a warp per token (route_warp.cuh; the default), or
// MXM_CUDA_ROUTE_WARP=0: a thread per token running the host's mxm_route_token (one thread walked a
// token's E logits and its heap: 25 us of Qwen3's 55 us step at T = 1 on an H100, session 26).
// Read at every forward, so one process can A/B both.
static int32_t route_warp_on() {
    const char *e = getenv("MXM_CUDA_ROUTE_WARP");
    return !(e && e[0] == '0');
}

// The MXFP8 wgmma kernels' m-tile: 256 tokens (128 weight rows per tile, half the weight decode
// per FLOP) when the step averages at least MXM_CUDA_WG256_MIN_ROWS rows per expert (T K / E, as
// above), else 128 (256 weight rows; less of a tile wasted on groups of 33..255 rows). H100,
// session 25 (docs/BENCHMARKS.md), 256 against 128 tokens: 1.00x / 1.02x / 1.09x at Nano / Qwen3 /
// the DeepSeek slice T = 16384; 0.84x at Qwen3 T = 4096 (256 rows per expert on average: many
// groups of a little over 256 rows take a second, nearly empty tile), 1.06x for the slice there.
// 64-token tiles (256 weight rows) for groups of 33..64 rows: unmeasured, MXM_CUDA_WG_BT=64 only.
// MXM_CUDA_WG_BT=64/128/256 forces one; read at every forward.
#define MXM_CUDA_WG256_MIN_ROWS 512
static int32_t wg_bt_of(const mxm_cuda_args &a) {
    if (a.blk) return 128; // DeepSeek FP8's wgmma tiles are 128 tokens
    const char *e = getenv("MXM_CUDA_WG_BT");
    if (e && e[0]) {
        const int v = atoi(e);
        return v == 256 || v == 64 ? v : 128;
    }
    return (int64_t)a.T * a.K >= (int64_t)MXM_CUDA_WG256_MIN_ROWS * a.E ? 256 : 128;
}

// The skinny kernels (decode, groups of up to MXM_CUDA_SKINNY_MAX rows) as persistent blocks that
// issue their next work item's first stages during the current one's last (gemm_skinny.cu):
// MXM_CUDA_SKINNY_PERSIST=1, off by default until a GPU A/B measures it (T = 8-256
// streams 73-92% of copy bandwidth with a block per item, H100 session 26). Read at every forward.
static int32_t skinny_persist_on() {
    const char *e = getenv("MXM_CUDA_SKINNY_PERSIST");
    return e && e[0] == '1';
}

// The decode prologue's L2 prefetch budget (l2_prefetch.h), MXM_CUDA_L2_PREFETCH_KB: a number of
// KB, or "l2" for 3/5 of the device's L2 (a step's prefetched weights and its own traffic fit
// together); unset or 0: off, until a same-call A/B on a GPU measures it. Read at every forward.
static int64_t l2_prefetch_bytes() {
    const char *e = getenv("MXM_CUDA_L2_PREFETCH_KB");
    if (!e || !e[0]) return 0;
    if (!strcmp(e, "l2")) return (int64_t)mxm_cuda_attr(MXM_ATTR_L2_BYTES) / 5 * 3;
    const long long kb = atoll(e); // capped at 1 TB: no overflow below
    return kb > 0 ? 1024 * (int64_t)(kb < (1ll << 30) ? kb : (1ll << 30)) : 0;
}

// The timeline probe's slots (moe/timeline.h), allocated on first use; MXM_CUDA_TIMELINE=1 (read
// at every forward) hands them to the kernels. One set per process: a diagnostic for one device.
static unsigned long long *timeline_slots;

static unsigned long long *timeline_probe() {
    const char *e = getenv("MXM_CUDA_TIMELINE");
    return e && e[0] == '1' ? timeline_slots : nullptr;
}

extern "C" mxm_status mxm_cuda_timeline_reset(void) {
    const size_t bytes = sizeof(unsigned long long) * 3 * MXM_SITES;
    if (!timeline_slots) MXM_CUDA_TRY(cudaMalloc(&timeline_slots, bytes));
    unsigned long long init[3 * MXM_SITES];
    for (int i = 0; i < 3 * MXM_SITES; i++)
        init[i] = i % 3 == 2 ? 0 : ~0ull; // min, min, max
    MXM_CUDA_TRY(cudaMemcpy(timeline_slots, init, bytes, cudaMemcpyHostToDevice));
    return MXM_OK;
}

extern "C" mxm_status mxm_cuda_timeline_read(uint64_t t[3 * MXM_SITES]) {
    if (!timeline_slots)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_cuda_timeline_read: no reset before");
    unsigned long long v[3 * MXM_SITES];
    MXM_CUDA_TRY(cudaMemcpy(v, timeline_slots, sizeof v, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 3 * MXM_SITES; i++)
        t[i] = v[i] == ~0ull ? 0 : (uint64_t)v[i];
    return MXM_OK;
}

mxm_status mxm_cuda_smem_limit(const void *kernel, size_t bytes) {
    struct grant {
        const void *kernel;
        int dev;
        size_t bytes;
    };
    static grant granted[256];
    static int n;
    static std::mutex lock;
    int dev = 0;
    MXM_CUDA_TRY(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> hold(lock);
    int i = 0;
    while (i < n && (granted[i].kernel != kernel || granted[i].dev != dev))
        i++;
    if (i < n && granted[i].bytes >= bytes) return MXM_OK;
    MXM_CUDA_TRY(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    if (i == n && n < 256) granted[n++] = {kernel, dev, 0};
    if (i < n) granted[i].bytes = bytes;
    return MXM_OK;
}

// The device attributes that launches size themselves by, cached per device (each
// cudaDeviceGetAttribute once); a failed query gives an H100's value.
int mxm_cuda_attr(mxm_cuda_attr_id id) {
    static const cudaDeviceAttr attr[MXM_ATTR_COUNT_] = {
        cudaDevAttrMultiProcessorCount, cudaDevAttrL2CacheSize,
        cudaDevAttrMaxSharedMemoryPerMultiprocessor};
    static const int fallback[MXM_ATTR_COUNT_] = {132, 50 << 20, 228 << 10};
    static std::atomic<int> cache[64][MXM_ATTR_COUNT_];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return fallback[id];
    int v = cache[dev][id].load(std::memory_order_relaxed);
    if (!v) {
        if (cudaDeviceGetAttribute(&v, attr[id], dev) != cudaSuccess || v <= 0) return fallback[id];
        cache[dev][id].store(v, std::memory_order_relaxed);
    }
    return v;
}

extern "C" int32_t mxm_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

// Workspace regions, 256-byte aligned.
struct cuda_layout {
    int64_t xq, ids, wts, pos, row_token, counts, act, y, route, xs, acts, actf, xc, xsf, total;
};

// Per-plan state: the device copy of the group table (plan-owned, so a workspace can serve
// several plans), followed on the host by the table being built and the last one uploaded.
struct cuda_state {
    mxm_cuda_group *dev_groups;
    int uploaded;
    int64_t route_bytes; // routing scratch per token
    bool codes;          // the skinny kernels take the activations as codes (codes_on at plan time)
    cudaStream_t side;   // the tile kernels' stream under MXM_CUDA_TILE_STREAM=1, and its events
    cudaEvent_t fork, join;
};

// The tile kernels (groups over MXM_CUDA_SKINNY_MAX rows) on a stream of the plan's own, forked
// after the prologue and joined before the combine, so the skinny chain does not wait on them:
// at T = 8-256 a step usually has no tile group, yet each empty tile launch put about 2.5 us
// between two skinny kernels (Qwen3 T = 64 timeline, H100 session 26). Not for DeepSeek FP8 W8A8,
// whose requantization between the GEMMs covers every group. MXM_CUDA_TILE_STREAM=1, off until
// a GPU A/B measures it; read at every forward.
static bool tile_stream_on() {
    const char *e = getenv("MXM_CUDA_TILE_STREAM");
    return e && e[0] == '1';
}

static int64_t take(int64_t *cur, int64_t n) {
    return mxm_ws_take(cur, n, 256);
}

// MXFP8 W8A8 layers give the skinny kernels their activations as codes (mxm_cuda_codes): 3-8%
// faster at T = 1-256 on an H100 (docs/BENCHMARKS.md, stop 21). MXM_CUDA_CODES=0 at plan creation
// keeps that plan on the exact bf16 decode (its workspace then has no room for the codes).
static bool codes_on(const mxm_moe_config &c) {
    const char *e = getenv("MXM_CUDA_CODES");
    return c.weight_format == MXM_WFMT_MXFP8 && c.act_quant == MXM_ACT_QUANT_MXFP8 &&
           !(e && e[0] == '0');
}

// Scales per row of a.xsf: one per 32 columns, padded to whole 16-byte pieces.
static int64_t xsf_stride(int64_t H) {
    return (H / 32 + 3) / 4 * 4;
}

static cuda_layout layout_of(const mxm_moe_plan *p, int64_t route_bytes, bool codes) {
    const mxm_moe_config &c = p->cfg;
    const int64_t T = p->max_tokens, K = c.top_k, H = c.hidden_size;
    const int64_t I_max = c.shared_intermediate_size > c.intermediate_size ? c.shared_intermediate_size
                                                                            : c.intermediate_size;
    const int64_t rows = T * K + (c.shared_intermediate_size ? T : 0), groups = p->e_loc + 1;
    cuda_layout l;
    int64_t cur = 0;
    l.xq = take(&cur, mxm_mul3_i64(T, H, 2));
    l.ids = take(&cur, mxm_mul3_i64(T, K, 4));
    l.wts = take(&cur, mxm_mul3_i64(T, K, 4));
    l.pos = take(&cur, mxm_mul3_i64(T, K, 4));
    l.row_token = take(&cur, mxm_mul3_i64(rows, 1, 4));
    l.counts = take(&cur, mxm_mul3_i64(groups + 1, 3, 4)); // cursors, 3 counts, skinny group list
    l.act = take(&cur, mxm_mul3_i64(rows, I_max, 2));
    l.y = take(&cur, mxm_mul3_i64(rows, H, 4));
    l.route = take(&cur, mxm_mul3_i64(T, route_bytes, 1));
    const bool blk = c.weight_format == MXM_WFMT_FP8_BLOCK; // DeepSeek FP8 scales and fp32 intermediate
    l.xs = take(&cur, blk ? mxm_mul3_i64(T, (H + 127) / 128, 4) : 0);
    l.acts = take(&cur, blk ? mxm_mul3_i64(rows, (I_max + 127) / 128, 4) : 0);
    l.actf = take(&cur, blk ? mxm_mul3_i64(rows, I_max, 4) : 0);
    l.xc = take(&cur, codes ? mxm_mul3_i64(T, H, 1) : 0);
    l.xsf = take(&cur, codes ? mxm_mul3_i64(T, xsf_stride(H), 4) : 0);
    l.total = cur < 0 ? -1 : mxm_align_up(cur, 256);
    return l;
}

static mxm_status cuda_plan(mxm_moe_plan *p) {
    if (!mxm_cuda_available()) return mxm_fail(MXM_ERR_NO_DEVICE, "backend cuda: no CUDA device is present");
    const mxm_moe_config &c = p->cfg;
    if (c.weight_format != MXM_WFMT_MXFP8 && c.weight_format != MXM_WFMT_FP8_BLOCK)
        return mxm_fail(MXM_ERR_UNSUPPORTED,
                        "weight format %s runs on the CPU backend only; the CUDA backend runs mxfp8 and fp8_block",
                        mxm_weight_format_name(c.weight_format));
    int dev = 0;
    MXM_CUDA_TRY(cudaGetDevice(&dev));
    if (c.device != dev)
        return mxm_fail(MXM_ERR_INVALID_ARG, "backend cuda: config device %d is not the current device %d",
                        c.device, dev);
    if (p->max_tokens > (1 << 26) / (c.top_k + 1))
        return mxm_fail(MXM_ERR_SHAPE,
                        "backend cuda: max_tokens x (top_k + 1) must stay below 2^26");
    p->kernels_name = "cuda-sm90";
    const int64_t route_bytes = mxm_route_device_scratch_bytes(&p->route);
    const bool codes = codes_on(c);
    const cuda_layout l = layout_of(p, route_bytes, codes);
    if (l.total < 0) return mxm_fail(MXM_ERR_OVERFLOW, "backend cuda: workspace size overflows");
    p->ws_bytes = l.total;
    // The host copy of the group table, then the last uploaded one (and where it went).
    p->backend_state = calloc(1, sizeof(cuda_state) + 2 * ((size_t)p->e_loc + 1) * sizeof(mxm_cuda_group));
    if (!p->backend_state) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    cuda_state *cs = (cuda_state *)p->backend_state;
    cs->route_bytes = route_bytes, cs->codes = codes;
    MXM_CUDA_TRY(cudaMalloc(&cs->dev_groups, sizeof(mxm_cuda_group) * ((size_t)p->e_loc + 1)));
    // Made here, not at a forward, which may be inside a stream capture.
    MXM_CUDA_TRY(cudaStreamCreateWithFlags(&cs->side, cudaStreamNonBlocking));
    MXM_CUDA_TRY(cudaEventCreateWithFlags(&cs->fork, cudaEventDisableTiming));
    MXM_CUDA_TRY(cudaEventCreateWithFlags(&cs->join, cudaEventDisableTiming));
    return MXM_OK;
}

static void cuda_destroy(mxm_moe_plan *p) {
    cuda_state *cs = (cuda_state *)p->backend_state;
    if (!cs) return;
    cudaFree(cs->dev_groups);
    if (cs->side) cudaStreamDestroy(cs->side);
    if (cs->fork) cudaEventDestroy(cs->fork);
    if (cs->join) cudaEventDestroy(cs->join);
}

static mxm_status cuda_forward(const mxm_moe_plan *p, const mxm_moe_weights *w,
                               const mxm_moe_inputs *in, const mxm_moe_outputs *out, void *ws,
                               void *stream) {
    const mxm_moe_config &c = p->cfg;
    cudaStream_t s = (cudaStream_t)stream;
    // The combine stores 4 columns at a time (16 bytes of f32, 8 of bf16).
    if ((uintptr_t)out->out % 16 || (uintptr_t)out->out_routed % 16)
        return mxm_fail(MXM_ERR_INVALID_ARG, "backend cuda: out and out_routed must be 16-byte aligned device pointers");
    cuda_state *cs = (cuda_state *)p->backend_state;
    const cuda_layout l = layout_of(p, cs->route_bytes, cs->codes);
    char *base = (char *)ws;
    const int64_t T = in->num_tokens, K = c.top_k;
    mxm_cuda_args a;
    memset(&a, 0, sizeof a);
    a.T = (int32_t)T, a.H = c.hidden_size, a.K = c.top_k, a.E = c.num_experts, a.e_loc = p->e_loc;
    a.off = c.local_expert_offset, a.groups = p->e_loc + (c.shared_intermediate_size ? 1 : 0);
    a.wfmt = c.weight_format, a.layout = c.w13_layout, a.act_quant = c.act_quant, a.profile = c.profile;
    a.rule = c.scale_rule, a.gated_routed = p->gated;
    a.gated_shared = c.shared_intermediate_size ? mxm_act_is_gated(p->shared_act) : -1;
    a.I_max = c.shared_intermediate_size > c.intermediate_size ? c.shared_intermediate_size : c.intermediate_size;
    a.I_min = c.shared_intermediate_size && c.shared_intermediate_size < c.intermediate_size
                  ? c.shared_intermediate_size
                  : c.intermediate_size;
    a.sk_persist = skinny_persist_on();
    a.blk = c.weight_format == MXM_WFMT_FP8_BLOCK;
    a.HB = (a.H + 127) / 128, a.IB = (a.I_max + 127) / 128;
    a.group = cs->dev_groups;
    a.ids = (int32_t *)(base + l.ids), a.wts = (float *)(base + l.wts), a.pos = (int32_t *)(base + l.pos);
    a.row_token = (int32_t *)(base + l.row_token);
    int32_t *cursor = (int32_t *)(base + l.counts);
    a.counts = cursor + (a.groups + 1);
    a.skinny_list = a.counts + 3; // counts: MMA tiles, skinny groups, wgmma m-tiles
    a.xq = (__nv_bfloat16 *)(base + l.xq), a.act = (__nv_bfloat16 *)(base + l.act), a.y = (float *)(base + l.y);
    a.xs = (float *)(base + l.xs), a.acts = (float *)(base + l.acts), a.actf = (float *)(base + l.actf);
    a.xc = cs->codes ? (uint8_t *)(base + l.xc) : nullptr;
    a.xsf = cs->codes ? (float *)(base + l.xsf) : nullptr;
    a.xsf_stride = (int32_t)xsf_stride(c.hidden_size);
    a.wg_bt = wg_bt_of(a);
    a.route_warp = route_warp_on();
    a.probe = timeline_probe();

    // Group table: weight pointers and activation parameters (the device fills rows and offsets).
    mxm_cuda_group *hg = (mxm_cuda_group *)(cs + 1), *last = hg + p->e_loc + 1;
    for (int g = 0; g < a.groups; g++) {
        const mxm_expert_desc e = mxm_expert_describe(p, w, g);
        mxm_cuda_group G;
        memset(&G, 0, sizeof G);
        G.w13 = (const uint8_t *)e.w13, G.w2 = (const uint8_t *)e.w2;
        G.sc13 = e.w13_scale, G.sc2 = e.w2_scale;
        G.sc13_bytes = mxm_weight_scale_bytes(c.weight_format, (e.gated ? 2 : 1) * (int64_t)e.I,
                                              c.hidden_size);
        G.sc2_bytes = mxm_weight_scale_bytes(c.weight_format, c.hidden_size, e.I);
        G.I = e.I, G.act = e.act;
        G.alpha = e.alpha, G.beta = e.beta, G.limit = e.limit;
        hg[g] = G;
    }
    // Upload only when the table or the workspace changed (steady-state forwards launch kernels
    // only, so they can be captured in a CUDA graph). Pageable source: the copy is staged before
    // the call returns, so the host table can be rewritten right away.
    const size_t tbytes = sizeof(mxm_cuda_group) * a.groups;
    if (!cs->uploaded || memcmp(hg, last, tbytes) != 0) {
        MXM_CUDA_TRY(cudaMemcpyAsync(a.group, hg, tbytes, cudaMemcpyHostToDevice, s));
        memcpy(last, hg, tbytes);
        cs->uploaded = 1;
    }

    // Caller-given routing is read in place (kernels only read a.ids / a.wts). Routing from logits
    // writes straight into the caller's topk outputs where given: no copy between the routing
    // and the GEMMs (a copy node would break the programmatic launch chain; 1.7 us at T = 1).
    if (!in->router_logits) {
        a.ids = (int32_t *)in->topk_ids, a.wts = (float *)in->topk_weights;
    } else {
        if (out->topk_ids) a.ids = out->topk_ids;
        if (out->topk_weights) a.wts = out->topk_weights;
    }
    mxm_status st;
    if (T <= MXM_CUDA_PROLOGUE_MAX_T) {
        mxm_cuda_prologue_in pin;
        memset(&pin, 0, sizeof pin);
        pin.x = in->x, pin.x_dtype = in->x_dtype, pin.x_scale = in->x_scale;
        pin.x_scale_transposed = in->x_scale_transposed;
        pin.logits = in->router_logits, pin.logits_dtype = in->logits_dtype;
        pin.bias = in->routing_bias, pin.bias_dtype = in->bias_dtype;
        pin.rp = p->route, pin.route_scratch = base + l.route, pin.route_stride = cs->route_bytes;
        pin.pf_bytes = l2_prefetch_bytes();
        if ((st = mxm_cuda_prologue(a, pin, s))) return st;
    } else {
        if ((st = mxm_cuda_prepare_x(a, in->x, in->x_dtype, in->x_scale, in->x_scale_transposed, s))) return st;
        if (in->router_logits &&
            (st = mxm_cuda_route(a, p->route, in->router_logits, in->logits_dtype, in->routing_bias, in->bias_dtype,
                                 base + l.route, s)))
            return st;
        if ((st = mxm_cuda_permute(a, cursor, s))) return st;
    }
    if (out->topk_ids && a.ids != out->topk_ids)
        MXM_CUDA_TRY(cudaMemcpyAsync(out->topk_ids, a.ids, sizeof(int32_t) * T * K, cudaMemcpyDeviceToDevice, s));
    if (out->topk_weights && a.wts != out->topk_weights)
        MXM_CUDA_TRY(cudaMemcpyAsync(out->topk_weights, a.wts, sizeof(float) * T * K, cudaMemcpyDeviceToDevice, s));
    // Upper bound of MMA tiles: every group's rows rounded up to whole tiles.
    const int64_t rows = T * K + (a.groups > p->e_loc ? T : 0);
    // A tile group has more than SKINNY_MAX rows, so at most rows / (SKINNY_MAX + 1) groups use tiles.
    const int64_t tile_groups = rows / (MXM_CUDA_SKINNY_MAX + 1) < a.groups ? rows / (MXM_CUDA_SKINNY_MAX + 1) : a.groups;
    // No group can exceed the skinny limit when every row of the step fits under it: no MMA launch.
    const bool tiles = (int64_t)T * K > MXM_CUDA_SKINNY_MAX || (a.groups > p->e_loc && T > MXM_CUDA_SKINNY_MAX);
    const int32_t max_tiles = tiles ? (int32_t)(rows / MXM_CUDA_BM + tile_groups + 1) : 0;
    const bool wg = wgmma_on(a); // one decision for both GEMMs
    if (max_tiles && tile_stream_on() && !mxm_cuda_blk_w8a8(a)) { // tiles beside the skinny chain
        MXM_CUDA_TRY(cudaEventRecord(cs->fork, s));
        MXM_CUDA_TRY(cudaStreamWaitEvent(cs->side, cs->fork, 0));
        // Forked: the side stream joins s again on every path, failed launches included (an
        // unjoined stream fails a capture, and its kernels would run on after the error returns).
        if (!(st = wg ? mxm_cuda_wgmma1(a, cs->side) : mxm_cuda_mma1(a, max_tiles, cs->side)) &&
            !(st = wg ? mxm_cuda_wgmma2(a, cs->side) : mxm_cuda_mma2(a, max_tiles, cs->side)) &&
            !(st = mxm_cuda_skinny1(a, s)))
            st = mxm_cuda_skinny2(a, s);
        MXM_CUDA_TRY(cudaEventRecord(cs->join, cs->side));
        MXM_CUDA_TRY(cudaStreamWaitEvent(s, cs->join, 0));
        return st ? st : mxm_cuda_combine(a, out->out, out->out_routed, out->out_dtype, s);
    }
    if ((st = mxm_cuda_skinny1(a, s)) ||
        (st = wg ? (max_tiles ? mxm_cuda_wgmma1(a, s) : MXM_OK) : mxm_cuda_mma1(a, max_tiles, s)) ||
        (st = mxm_cuda_requant_fp8block(a, s)) || (st = mxm_cuda_skinny2(a, s)) ||
        (st = wg ? (max_tiles ? mxm_cuda_wgmma2(a, s) : MXM_OK) : mxm_cuda_mma2(a, max_tiles, s)))
        return st;
    return mxm_cuda_combine(a, out->out, out->out_routed, out->out_dtype, s);
}

// Declared extern "C" in moe/plan.h, so the definition keeps external linkage.
const mxm_backend_ops mxm_cuda_backend = {"cuda", cuda_plan, cuda_forward, cuda_destroy};

// ---- device memory helpers of the public API ----------------------------------------------------

extern "C" mxm_status mxm_device_alloc(int64_t bytes, void **ptr) {
    if (!ptr) return mxm_fail(MXM_ERR_NULL, "mxm_device_alloc: ptr is NULL");
    *ptr = NULL;
    if (!mxm_cuda_available()) return mxm_fail(MXM_ERR_NO_DEVICE, "no CUDA device is present");
    MXM_CUDA_TRY(cudaMalloc(ptr, (size_t)(bytes > 0 ? bytes : 1)));
    return MXM_OK;
}

extern "C" void mxm_device_free(void *ptr) {
    if (ptr) cudaFree(ptr);
}

extern "C" mxm_status mxm_copy_to_device(void *dst, const void *src, int64_t bytes) {
    MXM_CUDA_TRY(cudaMemcpy(dst, src, (size_t)bytes, cudaMemcpyHostToDevice));
    return MXM_OK;
}

extern "C" mxm_status mxm_copy_to_host(void *dst, const void *src, int64_t bytes) {
    MXM_CUDA_TRY(cudaMemcpy(dst, src, (size_t)bytes, cudaMemcpyDeviceToHost));
    return MXM_OK;
}

extern "C" mxm_status mxm_device_synchronize(void) {
    MXM_CUDA_TRY(cudaDeviceSynchronize());
    return MXM_OK;
}

extern "C" const char *mxm_device_name(void) {
    static char name[256];
    cudaDeviceProp prop;
    int dev = 0;
    if (!mxm_cuda_available() || cudaGetDevice(&dev) != cudaSuccess ||
        cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
        return "";
    snprintf(name, sizeof name, "%s", prop.name);
    return name;
}

// ---- CUDA graphs of a whole forward ----------------------------------------------------------------

struct mxm_cuda_graph {
    cudaGraphExec_t exec;
    cudaStream_t stream; // recorded on (the caller's, or a private one)
    cudaStream_t launch; // replayed on: the caller's stream, NULL = legacy default stream
    int own_stream;
};

extern "C" mxm_status mxm_cuda_graph_capture(mxm_moe_plan *p, const mxm_moe_weights *w, const mxm_moe_inputs *in,
                                             const mxm_moe_outputs *out, void *ws, int64_t wsb, void *stream,
                                             mxm_cuda_graph **graph) {
    if (!graph) return mxm_fail(MXM_ERR_NULL, "mxm_cuda_graph_capture: graph is NULL");
    *graph = NULL;
    if (!p || p->cfg.backend != MXM_BACKEND_CUDA)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_cuda_graph_capture: needs a plan of the CUDA backend");
    mxm_cuda_graph *g = (mxm_cuda_graph *)calloc(1, sizeof *g);
    if (!g) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    g->stream = g->launch = (cudaStream_t)stream;
    if (!g->stream) { // the legacy default stream cannot be captured: record on a private one
        if (cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking) != cudaSuccess) {
            free(g);
            return mxm_fail(MXM_ERR_CUDA, "mxm_cuda_graph_capture: cannot create a stream");
        }
        g->own_stream = 1;
    }
    cudaGraph_t graph_def = NULL;
    mxm_status st = MXM_OK;
    if (cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        st = mxm_fail(MXM_ERR_CUDA, "mxm_cuda_graph_capture: cannot begin a capture");
    } else {
        st = mxm_moe_forward(p, w, in, out, ws, wsb, g->stream);
        const cudaError_t e = cudaStreamEndCapture(g->stream, &graph_def);
        if (!st && e != cudaSuccess)
            st = mxm_fail(MXM_ERR_CUDA, "mxm_cuda_graph_capture: %s (run one plain forward first)", cudaGetErrorString(e));
        if (!st && cudaGraphInstantiate(&g->exec, graph_def, 0) != cudaSuccess)
            st = mxm_fail(MXM_ERR_CUDA, "mxm_cuda_graph_capture: cannot instantiate the graph");
    }
    if (graph_def) cudaGraphDestroy(graph_def);
    cudaGetLastError();
    if (st) {
        mxm_cuda_graph_destroy(g);
        return st;
    }
    *graph = g;
    return MXM_OK;
}

extern "C" mxm_status mxm_cuda_graph_launch(mxm_cuda_graph *g) {
    if (!g) return mxm_fail(MXM_ERR_NULL, "mxm_cuda_graph_launch: graph is NULL");
    MXM_CUDA_TRY(cudaGraphLaunch(g->exec, g->launch));
    return MXM_OK;
}

// Holds the stream for ns nanoseconds of GPU time (the host enqueues the replays meanwhile).
static __global__ void spin_kernel(unsigned long long ns) {
    const unsigned long long t0 = mxm_globaltimer();
    while (mxm_globaltimer() - t0 < ns) {
    }
}

static int cmp_float(const void *x, const void *y) {
    const float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

extern "C" mxm_status mxm_cuda_graph_median_us(mxm_cuda_graph *const *graphs, int n, int iters,
                                               double *us) {
    if (!graphs || n <= 0 || iters <= 0 || !us)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_cuda_graph_median_us: bad arguments");
    for (int i = 0; i < n; i++)
        if (!graphs[i])
            return mxm_fail(MXM_ERR_NULL, "mxm_cuda_graph_median_us: graph %d is NULL", i);
    const cudaStream_t s = graphs[0]->launch;
    cudaEvent_t *ev = (cudaEvent_t *)calloc(2 * (size_t)iters, sizeof *ev);
    float *ms = (float *)malloc(sizeof(float) * (size_t)iters);
    mxm_status st = ev && ms ? MXM_OK : mxm_fail(MXM_ERR_NOMEM, "out of memory");
    int made = 0;
    for (; !st && made < 2 * iters; made++)
        if (cudaEventCreate(&ev[made]) != cudaSuccess)
            st = mxm_fail(MXM_ERR_CUDA, "cannot create events");
    for (int i = 0; i < n && !st; i++)
        st = mxm_cuda_graph_launch(graphs[i]);
    if (!st && cudaStreamSynchronize(s) != cudaSuccess)
        st = mxm_fail(MXM_ERR_CUDA, "warm-up replays failed");
    if (!st) {
        spin_kernel<<<1, 1, 0, s>>>(2000000ull + 20000ull * (unsigned long long)iters);
        for (int i = 0; i < iters && !st; i++) {
            cudaEventRecord(ev[2 * i], s);
            st = mxm_cuda_graph_launch(graphs[i % n]);
            cudaEventRecord(ev[2 * i + 1], s);
        }
        if (!st && cudaStreamSynchronize(s) != cudaSuccess)
            st = mxm_fail(MXM_ERR_CUDA, "timed replays failed");
        for (int i = 0; i < iters && !st; i++)
            if (cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]) != cudaSuccess)
                st = mxm_fail(MXM_ERR_CUDA, "cannot read the events");
    }
    if (!st) {
        qsort(ms, (size_t)iters, sizeof *ms, cmp_float);
        *us = 1e3 * (iters % 2 ? ms[iters / 2] : 0.5 * (ms[iters / 2 - 1] + ms[iters / 2]));
    }
    for (int i = 0; i < made; i++)
        cudaEventDestroy(ev[i]);
    free(ev), free(ms);
    cudaGetLastError();
    return st;
}

extern "C" void mxm_cuda_graph_destroy(mxm_cuda_graph *g) {
    if (!g) return;
    if (g->exec) cudaGraphExecDestroy(g->exec);
    if (g->own_stream) cudaStreamDestroy(g->stream);
    free(g);
}
