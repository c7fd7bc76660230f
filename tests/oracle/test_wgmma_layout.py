#!/usr/bin/env python3
# Run: python3 tests/oracle/test_wgmma_layout.py (no GPU, no numpy; CTest: py_test_wgmma_layout).
# CPU model of the index math of src/cuda/gemm_wgmma.cu and of the tile0_wg prefix in
# src/cuda/permute.cu, for the four tile shapes of wgmma_kernel<MODE, MB, BT, WF> (wg_shape<MB, BT,
# BLK>: BT tokens per tile as NH = BT / WN blocks of WN = wn_of(BT) = min(BT, 128) tokens, the
# wgmma's N; NACC = WN / 2 accumulators per thread of one m64 x WN block; acc[NH mb + nh][NACC]):
#  - MXFP8, MB = 2, BT = 128 (a.wg_bt = 128; WN = 128, NH = 1): 256 weight rows x 128 tokens; each
#    consumer warpgroup owns two m64 weight blocks, two m64n128k16 per k16 step (acc[2][64]);
#  - MXFP8, MB = 1, BT = 256 (a.wg_bt = 256; WN = 128, NH = 2): 128 weight rows x 256 tokens; each
#    consumer owns one m64 block and issues two m64n128k16 per k16 step on it, token block nh
#    through the B descriptor + nh WN 128 B = 16 KB (acc[2][64]); gated: fragment rows g / g + 8
#    are gate / up of one column;
#  - MXFP8, MB = 2, BT = 64 (a.wg_bt = 64; WN = 64, NH = 1): 256 weight rows x 64 tokens; two
#    m64n64k16 per k16 step on two fragments (acc[2][32]), 6 stages of 24 KB (SLOT_ACT 8 KB +
#    SLOT_W 16 KB); GEMM1 epilogue: gated one pass of 64 tokens, plain two passes (m64 blocks)
#    of 64 tokens;
#  - DeepSeek FP8 (BLK, WF = MXM_WFMT_FP8_BLOCK), MB = 1, BT = 128 (a.wg_bt = 128; WN = 128,
#    NH = 1): 128 weight rows x 128 tokens, 6 stages of SLOT_ACT + SLOT_W + SLOT_XS (the tile's
#    128 fp32 activation scales of the stage's 128-block of K at OFF_XS); per-128-block partial
#    sums promoted into acc with the activation scale (from the block's last stage) times the
#    weight scale.
# Hardware semantics assumed from the PTX ISA (as the prototype's model did, docs/wgmma.md):
# 128B swizzle = address bits [4:6] ^= [7:9]; wgmma A-register fragment = the mma.m16n8k16 A layout per warp (warp w of the warpgroup holds
# rows 16w..16w+15); wgmma m64nNk16 f32 D fragment (N = 64: d[0..31], N = 128: d[0..63], the same
# per-8-column pattern): d[i] of lane l in warp w is row 16w + l/4 + 8((i>>1)&1), column
# 8(i>>2) + 2(l%4) + (i&1); B row n of a K-major 128B-swizzled operand at start + (n/8) 1024 +
# (n%8) 128 (stride byte offset 1024), n < N; 16-byte shared loads are served in four phases of
# 8 consecutive lanes.
# Checks, per shape ((MB, BT) = (2, 128), (1, 256), (2, 64), BLK (1, 128)) and mode (gated GEMM1,
# plain GEMM1, GEMM2):
#  0. the shared-memory layout (wg_shape<MB, BT, BLK>): WN / NH / NACC as the kernel derives them,
#     stages (4, or 6 for BLK and BT = 64) 1024-aligned, epilogue buffers and barriers after the
#     ring, BLK's scale region inside the slot, the total within 227 KB;
#  1. producer placement of codes / activations (BW/32 code and BT/16 activation chunks per
#     thread) vs. the consumers' fragment reads and the B descriptor reads (WN rows per wgmma),
#     token block nh at + nh WN rows x 128 B (every A/B element is the intended (tile row, k) /
#     (token, k); the m64 blocks partition the BW tile rows, the token blocks the BT tokens);
#     GEMM2's affine row counts equal the row predicates;
#  2. the weight row behind every fragment row (codes and scale bytes agree, scale block of
#     every k) and the gated pairing: MB = 2, acc[0][i] and acc[1][i] of one thread are gate
#     and up of one (column j, token); MB = 1, fragment rows g and g + 8 (acc[nh][i], i + 2);
#  3. the GEMM1 epilogue (gemm1_epilogue<MODE, MB, BT, WF>, all four buffer geometries; PT and
#     PASSES as the kernel computes them, and against each shape's intended (passes, tokens per
#     pass)), with the accumulators' symbolic contents (weight row, token) from 1-2 over the
#     fragment loop i < NACC: each pass writes every (buffer row, column) exactly once and inside
#     the buffer, the readers (one thread per (token, 32-column block)) read each once, and what
#     they read is the right (token, j) (gate, up; MB = 1 gated: the activated pair); 32-bit
#     stores hit 32 distinct banks per warp and i, float4 reads distinct 4-bank groups per
#     8-lane phase; every (token, j) of the tile (below the group's rows and I) is stored once;
#  4. GEMM2 stores (i < NACC / 4, m = m0 + WN nh + 8 i + 2 tq): every (token, h) of a tile once,
#     holding that (token, h); 1, 2 and 4 also on a hypothetical (MB, BT) = (1, 128) of two
#     m64n64k16 token blocks (WN = 64, NH = 2): WN nh differs from 128 nh nowhere else (every
#     instantiated NH = 2 shape has WN = 128);
#  5. the tile schedule: every a.wg_bt moe_cuda.cu's wg_bt_of sets (64 / 128 / 256; 128 for
#     BLK) launches (launch_shape) the shape with BT = a.wg_bt; random group sizes through the
#     permute prefix (tile0_wg of a.wg_bt rows, counts[2]) and map_tile (m0 = (mt - tile0_wg)
#     BT) over t = 0..counts[2]*ntn-1: every valid output element (row, column) of every tiled
#     group is produced by exactly one tile, and nothing outside the group's rows / I / H; the
#     launch's grid bound ((rows / BT + tg + 1) ntn) covers the tiles;
#  6. K tails (K % 64 = 32): the zero-fill predicates cover exactly k >= K (BLK: the scale
#     indices k0 / 128 and kt / 2 stay inside a row's ceil(K / 128) scales).
# DeepSeek FP8 (BLK) only:
#  B1. the promote's xs[tok] token (WN (f % NH) + 8 (i >> 2) + 2 tq + (i & 1)) = the accumulator
#      element's token (D fragment + B descriptor map) for every (thread, f, i < NACC); also on
#      hypothetical BLK (2, 128) / (1, 256) / (2, 64) / (1, 128) with WN = 64 consumers;
#  B2. the producer's 4-byte xs copies: token row tid at OFF_XS + 4 tid, inside the slot, clear of
#      the activation and code bytes, the scale of k-block k0 / 128 (a.xs by token, a.acts by
#      row), zero past the rows; through a simulated 6-stage ring over tile sequences of various
#      K (producer as far ahead as the empty barriers allow): the promote at a block's last stage
#      reads that stage's copy, the block's own scales, before the stage is released;
#  B3. the weight scale wsc[f / NH][(i >> 1) & 1] is the 128-row block of the weight row whose
#      codes the element multiplied (three W13 layouts, I not a multiple of 128, GEMM2 rows);
#  B4. blk_first / blk_last partition the stages into the 128-blocks of K (kt / 2 = k0 / 128;
#      a final 64- or 32-wide block promoted too), part restarted at each block's first k16 step.
import random
import time

SKINNY_MAX, BM = 32, 64
GATED, PLAIN, GEMM2 = 0, 1, 2
IL, UG, GU = 2, 1, 0  # MXM_W13_INTERLEAVED, MXM_W13_UP_GATE, gate/up (the SPEC's order)
TAB_MAX = 512


def wn_of(bt):  # constexpr wn_of: tokens per wgmma (its N)
    return bt if bt < 128 else 128


class Shape:  # wg_shape<MB, BT, BLK>
    """MXFP8 runs (MB, BT) = (2, 128), (1, 256) and (2, 64); DeepSeek FP8 (BLK,
    WF = MXM_WFMT_FP8_BLOCK) runs (1, 128): 128 weight rows x 128 tokens, 6 stages, each slot
    SLOT_ACT + SLOT_W + SLOT_XS with the tile's BT fp32 activation scales at OFF_XS. BLK shapes
    other than (1, 128) are hypothetical (the kernel's static_assert rejects them; B1 / B3 use
    them to exercise the promote's generic index math), and so is a WN other than wn_of(BT)
    (token blocks of m64n64k16 on a 128-token tile: the only way to make the WN nh offsets
    differ from 128 nh)."""

    def __init__(self, MB, BT, BLK=False, WN=None):
        self.MB, self.BT, self.BLK = MB, BT, BLK
        self.key = (MB, BT, BLK) if WN is None else (MB, BT, BLK, WN)
        self.WN = wn_of(BT) if WN is None else WN  # tokens per wgmma
        self.NH = BT // self.WN  # token blocks of WN (acc[NH mb + nh])
        self.NACC = self.WN // 2  # accumulators per thread of one m64 x WN block
        # the kernel's static_asserts
        assert self.MB * self.NH <= 2 and MB in (1, 2)
        assert self.WN in (64, 128) and self.NH * self.WN == BT
        self.BW = 128 * MB
        self.BK = 64
        self.SLOT_ACT = self.BT * self.BK * 2
        self.SLOT_W = self.BW * self.BK
        self.SLOT_XS = 1024 if BLK else 0
        self.SLOT = self.SLOT_ACT + self.SLOT_W + self.SLOT_XS
        self.OFF_XS = self.SLOT_ACT + self.SLOT_W  # the kernel's OFF_XS
        self.STAGES = 6 if BLK or BT == 64 else 4
        self.EPI_BYTES = 128 * 68 * 4 if MB == 2 else 128 * 36 * 4
        self.OFF_EPI = self.STAGES * self.SLOT
        self.OFF_BAR = self.OFF_EPI + 2 * self.EPI_BYTES
        self.OFF_TAB = self.OFF_BAR + 16 * self.STAGES
        self.smem_bytes = self.OFF_TAB + 4 * TAB_MAX + 1024

    def __repr__(self):
        return "(MB=%d,BT=%d%s%s)" % (self.MB, self.BT, ",BLK" if self.BLK else "",
                                      ",WN=%d" % self.WN if len(self.key) > 3 else "")


def w13_row(layout, gated, I, j, half):
    if not gated:
        return j
    if layout == IL:
        return 2 * j + half
    first = 1 if layout == UG else 0
    return (0 if half == first else I) + j


def tile_cols(S, mode):  # tile_cols<MODE, MB>: 64 MB gated, 128 MB else
    return 64 * S.MB if mode == GATED else 128 * S.MB


def weight_row(S, mode, layout, I, H, n0, rl):
    if mode == GATED:
        if S.MB == 2:
            j = n0 + 64 * (rl >> 7) + (rl & 63)
            half = (rl >> 6) & 1
        else:
            j = n0 + 32 * (rl >> 6) + 8 * ((rl >> 4) & 3) + (rl & 7)
            half = (rl >> 3) & 1
        return w13_row(layout, True, I, j, half) if j < I else -1
    n = n0 + rl
    return n if n < (H if mode == GEMM2 else I) else -1


def d_frag(w, lane, i):
    return 16 * w + (lane >> 2) + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)


def check_smem(S):
    assert S.SLOT % 1024 == 0 and S.OFF_EPI % 16 == 0 and S.EPI_BYTES % 16 == 0
    assert S.OFF_BAR % 8 == 0 and S.OFF_TAB % 4 == 0
    assert S.smem_bytes <= 227 * 1024, (S, S.smem_bytes)
    assert 64 * 68 * 4 <= Shape(1, 128, True).EPI_BYTES  # plain MB = 1 epilogue pass
    # the intended geometry of each instantiated shape: (WN, NH, NACC, STAGES, stage bytes)
    design = {(2, 128, False): (128, 1, 64, 4, 32768), (1, 256, False): (128, 2, 64, 4, 40960),
              (2, 64, False): (64, 1, 32, 6, 24576), (1, 128, True): (128, 1, 64, 6, 25600)}
    if S.key in design:
        assert (S.WN, S.NH, S.NACC, S.STAGES, S.SLOT) == design[S.key], (S, "geometry")
    # acc[MB NH][NACC] of the 256 consumer threads hold the BW x BT tile once (m64 x WN blocks)
    assert 256 * S.MB * S.NH * S.NACC == S.BW * S.BT and 2 * S.NACC == S.WN
    # every stage starts on a 1024-byte swizzle atom (sbase is 1024-aligned); the regions follow
    # each other: ring, two epilogue buffers, full + empty barriers (8 B each per stage), table
    for s in range(S.STAGES):
        assert (s * S.SLOT) % 1024 == 0
    assert S.OFF_EPI == S.STAGES * S.SLOT and S.OFF_BAR == S.OFF_EPI + 2 * S.EPI_BYTES
    assert S.OFF_TAB == S.OFF_BAR + 2 * 8 * S.STAGES
    if S.BLK:
        # the scales of the tile's BT tokens fit the slot's last region, after the codes
        assert S.SLOT_XS >= 4 * S.BT and S.OFF_XS == S.SLOT_ACT + S.SLOT_W
        assert S.OFF_XS % 16 == 0 and S.OFF_XS + 4 * S.BT <= S.SLOT
    else:
        assert S.SLOT == S.SLOT_ACT + S.SLOT_W
    # the descriptor's 14-bit start address field holds every B start (sbase < 1024 extra)
    assert (1024 + S.STAGES * S.SLOT) < (1 << 18)


_maps = {}
_written = {}  # S.key -> (activation bytes, code bytes) the producer's 16-byte copies write in a slot


def fragment_maps(S):
    """Producer placement vs. consumer reads (mode independent). Returns
    amap[(wgi, mb)][r] = tile row of wgmma A row r of consumer wgi's block mb (from the codes the
    fragment registers decode), bmap[nh][n] = token of B row n < WN of token block nh (from the
    descriptor), and areg[(wgi, w, lane, mb, rr)] = tile row of the thread's fragment rows
    g + 8 rr."""
    if S.key in _maps:
        return _maps[S.key]
    NA, NW = S.BT // 16, S.BW // 32
    # producer: weight codes (tile row, k) at slot byte offsets
    place = {}
    for tid in range(128):
        wc, wr = tid & 3, tid >> 2
        w_sw = (wc ^ ((wr >> 1) & 3)) << 4
        for i in range(NW):
            r = wr + 32 * i
            for b in range(16):
                off = S.SLOT_ACT + r * 64 + w_sw + b
                assert S.SLOT_ACT <= off < S.SLOT and off not in place
                place[off] = (r, 16 * wc + b)
    assert len(place) == S.BW * 64
    # consumers: fragment registers -> (tile row, k); the scale row of each register
    amap, areg = {}, {}
    for ct in range(256):
        wgi, w, lane = ct >> 7, (ct >> 5) & 3, ct & 31
        g, t = lane >> 2, lane & 3
        rl = 64 * S.MB * wgi + 16 * w + g
        sw = (g >> 1) & 3
        a_thr = S.SLOT_ACT + rl * 64 + 2 * t
        for ks in range(4):
            koff = (ks ^ sw) << 4
            for mb in range(S.MB):
                p = a_thr + mb * 64 * 64 + koff
                # fr[ks][mb][0..3] = x00 (p), x10 (p + 512), x01 (p + 8), x11 (p + 520) with the
                # scales scf[mb][0], scf[mb][1], scf[mb][0], scf[mb][1] of block b = ks >> 1
                for reg, off, rr in ((0, p, 0), (1, p + 512, 1), (2, p + 8, 0), (3, p + 520, 1)):
                    row_in_frag = g + (8 if reg in (1, 3) else 0)  # mma A layout
                    col = 2 * t + (8 if reg in (2, 3) else 0)
                    rows = set()
                    for h in range(2):
                        row, k = place[off + h]
                        assert k == 16 * ks + col + h, (S, ct, ks, mb, reg)
                        rows.add(row)
                        # the scale block decoding this k: stage block ks >> 1 = (global 2 kt + b)
                        assert k // 32 == ks >> 1
                    assert len(rows) == 1
                    row = rows.pop()
                    m = amap.setdefault((wgi, mb), {})
                    assert m.setdefault(16 * w + row_in_frag, row) == row
                    # the scale row sp[mb][rr] is the same tile row (so the same weight row)
                    assert row == rl + 64 * mb + 8 * rr, (S, ct, mb, reg)
                    assert areg.setdefault((wgi, w, lane, mb, rr), row) == row
    # design: consumer wgi's block mb is tile rows 64 MB wgi + 64 mb + (0..63); blocks partition
    seen = []
    for (wgi, mb), m in amap.items():
        assert sorted(m) == list(range(64))
        for r in range(64):
            assert m[r] == 64 * S.MB * wgi + 64 * mb + r, (S, wgi, mb, r, m[r])
        seen += m.values()
    assert sorted(seen) == list(range(S.BW))
    # activations: producer placement vs. the 128B-swizzle descriptor (advanced 32 B per k16,
    # WN rows x 128 B per token block); the swizzle acts on absolute addresses (sbase is
    # 1024-aligned)
    act = {}
    for tid in range(128):
        ac, ar = tid & 7, tid >> 3
        a_sw = (ac ^ (ar & 7)) << 4
        for i in range(NA):
            r = ar + 16 * i
            for e in range(8):
                off = r * 128 + a_sw + 2 * e
                assert 0 <= off < S.SLOT_ACT and off not in act
                act[off] = (r, 8 * ac + e)
    assert len(act) == S.BT * 64
    # the wgmma's N: wgmma_rs picks m64n128k16 for acc rows of 64 floats, m64n64k16 for 32
    N = {64: 128, 32: 64}[S.NACC]
    bmap = {}
    for s in range(S.STAGES):
        for ks in range(4):
            for nh in range(S.NH):
                start = ((s * S.SLOT + ks * 32) >> 4) + ((nh * S.WN * 128) >> 4)  # desc - desc0
                start <<= 4
                for n in range(N):
                    for kk in range(16):
                        lin = start + (n // 8) * 1024 + (n % 8) * 128 + 2 * kk
                        sw = lin ^ (((lin >> 7) & 7) << 4)
                        rel = sw - s * S.SLOT
                        assert 0 <= rel < S.SLOT_ACT, (S, s, ks, nh, n)
                        tok, k = act[rel]
                        assert k == 16 * ks + kk, (S, s, ks, nh, n, kk)
                        assert bmap.setdefault(nh, {}).setdefault(n, tok) == tok
    seen = []
    assert sorted(bmap) == list(range(S.NH))
    for nh, m in bmap.items():
        assert sorted(m) == list(range(N))
        for n in range(N):
            assert m[n] == S.WN * nh + n, (S, nh, n, m[n])
        seen += m.values()
    assert sorted(seen) == list(range(S.BT))
    _written[S.key] = ({off + h for off in act for h in range(2)}, set(place))
    _maps[S.key] = (amap, bmap, areg)
    return _maps[S.key]


def acc_val(S, amap, bmap, wgi, w, lane, f, i):
    # wgmma(acc[NH mb + nh], fr[ks][mb], desc + block nh): D row = A row of block mb, D column =
    # B row of token block nh (m64nNk16, N = 2 NACC: d[i], i < NACC). Returns (tile row, token
    # in the tile).
    mb, nh = f // S.NH, f % S.NH
    assert 0 <= f < S.MB * S.NH and f == S.NH * mb + nh and 0 <= i < S.NACC, (S, f, i)
    drow, dcol = d_frag(w, lane, i)
    assert 0 <= drow < 64 and 0 <= dcol < 2 * S.NACC
    return amap[(wgi, mb)][drow], bmap[nh][dcol]


def check_operands(S, mode, layout, I, H, n0):
    amap, bmap, areg = fragment_maps(S)
    # weight rows of the fragment rows (the codes' rows: the producer loads tile row r from
    # weight_row(r), wrow[i]) and of the scale pointers sp[mb][rr]: the same tile row, above
    frag_row = {}
    for (wgi, w, lane, mb, rr), row in areg.items():
        rl = 64 * S.MB * wgi + 16 * w + (lane >> 2)
        sc = weight_row(S, mode, layout, I, H, n0, rl + 64 * mb + 8 * rr)
        assert weight_row(S, mode, layout, I, H, n0, row) == sc
        frag_row[(wgi, w, lane, mb, rr)] = sc
    # GEMM1 weight rows of one tile are distinct (the valid ones)
    rows = [weight_row(S, mode, layout, I, H, n0, r) for r in range(S.BW)]
    valid = [r for r in rows if r >= 0]
    assert len(valid) == len(set(valid))
    if mode == GATED:
        # the tile's columns n0 .. n0 + BW/2 - 1 (those < I): gate and up rows each once
        exp = {w13_row(layout, True, I, j, h) for j in range(n0, min(n0 + tile_cols(S, mode), I)) for h in range(2)}
        assert set(valid) == exp
        for (wgi, w, lane, mb, rr), r in frag_row.items():
            g = lane >> 2
            if S.MB == 2:  # block 0 = gate, block 1 = up of one column
                if mb:
                    continue
                gate, up = r, frag_row[(wgi, w, lane, 1, rr)]
                j = n0 + 64 * wgi + 16 * w + g + 8 * rr
            else:  # fragment row g = gate, g + 8 = up of one column
                if rr:
                    continue
                gate, up = r, frag_row[(wgi, w, lane, mb, 1)]
                j = n0 + 32 * wgi + 8 * w + g
            if j < I:
                assert gate == w13_row(layout, True, I, j, 0) and up == w13_row(layout, True, I, j, 1), (S, gate, up, j)
            else:
                assert gate == -1 and up == -1
    else:
        lim = H if mode == GEMM2 else I
        assert rows == [n0 + r if n0 + r < lim else -1 for r in range(S.BW)]


def check_affine(S):
    # GEMM2's producer: na / nw (C division of non-negative values) == the row predicates
    NA, NW = S.BT // 16, S.BW // 32
    for left in range(1, S.BT + 40):  # rows - m0 >= 1
        for ar in range(16):
            na = min(max((left - ar + 15) // 16, 0), NA)
            assert [i < na for i in range(NA)] == [ar + 16 * i < left for i in range(NA)]
    for left in range(1, S.BW + 70):  # H - n0 >= 1
        for wr in range(32):
            nw = min(max((left - wr + 31) // 32, 0), NW)
            assert [i < nw for i in range(NW)] == [wr + 32 * i < left for i in range(NW)]


def check_epilogue(S, mode, layout, I, n0, left):
    """gemm1_epilogue<MODE, MB, BT, WF> for a tile at column n0 with `left` = rows - m0 tokens
    left."""
    amap, bmap, _ = fragment_maps(S)
    MB = S.MB
    gated = mode == GATED
    PRE = gated and MB == 1
    STR = 36 if PRE else 68
    PT = (64 if gated else S.BT) if MB == 2 else (128 if gated else 64)  # tokens per pass
    NBLK = 1 if PRE else 2
    PASSES = (S.BT // 64 if gated else 2) if MB == 2 else (S.NH if gated else 2 * S.NH)
    # the intended passes of each instantiated shape: (PASSES, PT) gated / plain. MB = 2: gated
    # 64 tokens a pass, plain one m64 block a pass for all BT tokens; MB = 1: gated one 128-token
    # block a pass, plain 64 tokens a pass
    design = {(2, 128, False): ((2, 64), (2, 128)), (1, 256, False): ((2, 128), (4, 64)),
              (2, 64, False): ((1, 64), (2, 64)), (1, 128, True): ((1, 128), (2, 64))}
    if S.key in design:
        assert (PASSES, PT) == design[S.key][0 if gated else 1], (S, mode, PASSES, PT)
    TC = tile_cols(S, mode)
    nwords = S.EPI_BYTES // 4

    def wrow(tile_row):
        return weight_row(S, mode, layout, I, 0, n0, tile_row)

    all_stored = set()
    for wgi in range(2):
        stored = set()
        for p in range(PASSES):
            buf = {}
            for i in range(S.NACC):
                banks = {}  # (store statement, warp) -> banks
                for w in range(4):
                    for lane in range(32):
                        gq, tq = lane >> 2, lane & 3
                        rr = (i >> 1) & 1
                        c = 16 * w + gq + 8 * rr
                        tok = 8 * (i >> 2) + 2 * tq + (i & 1)  # token within the WN-token block

                        def A(f, ii):
                            row, tk = acc_val(S, amap, bmap, wgi, w, lane, f, ii)
                            return wrow(row), tk

                        writes = []
                        if MB == 2 and gated:
                            if (i >> 5) == p:
                                writes.append((0, (tok - 64 * p) * STR + c, A(0, i)))
                                writes.append((1, (tok - 64 * p + 64) * STR + c, A(1, i)))
                        elif MB == 2:
                            writes.append((0, tok * STR + c, A(p, i)))
                        elif gated:
                            if rr == 0:
                                writes.append((0, tok * STR + 8 * w + gq, ("act", A(p, i), A(p, i + 2))))
                        elif (i >> 5) == (p & 1):
                            writes.append((0, (tok - 64 * (p & 1)) * STR + c, A(p >> 1, i)))
                        for st, addr, v in writes:
                            assert 0 <= addr < nwords, (S, mode, wgi, p, i, w, lane, addr)
                            assert addr not in buf, (S, mode, wgi, p, i, w, lane, addr)
                            buf[addr] = v
                            banks.setdefault((st, w), []).append(addr % 32)
                for (st, w), bl in banks.items():
                    assert len(bl) == 32 and len(set(bl)) == 32, (S, mode, "store bank conflict", p, i, st, w)
            # the pass's region: PT buffer rows (MB = 2 gated: + 64 up rows) x NBLK * 32 columns
            nrows = 128 if MB == 2 and gated else PT
            assert set(buf) == {r * STR + col for r in range(nrows) for col in range(32 * NBLK)}, (S, mode, p)
            jb = (64 * wgi if gated else 128 * wgi + 64 * p) if MB == 2 else (32 * wgi if gated else 64 * wgi)
            tok0 = 0 if MB == 2 and not gated else PT * p  # first token of the pass in the tile
            reads = {}
            phase = {}  # (statement, j, warp, iteration, phase) -> 4-bank groups
            full = True
            for th in range(128):  # ct & 127
                for k, u in enumerate(range(th, NBLK * PT, 128)):
                    r, b = u % PT, u // PT
                    if tok0 + r >= left or n0 + jb + 32 * b >= I:
                        full = False
                        # columns of a skipped block are all past I (I % 32 == 0)
                        assert tok0 + r >= left or all(n0 + jb + 32 * b + x >= I for x in range(32))
                        continue
                    e = r * STR + 32 * b
                    for j in range(0, 32, 4):
                        loads = [(0, e + j)] if not (gated and not PRE) else [(0, e + j), (1, e + 64 * STR + j)]
                        for st, addr in loads:
                            assert addr % 4 == 0 and 0 <= addr and addr + 3 < nwords  # float4: 16-byte aligned
                            phase.setdefault((st, j, th >> 5, k, (th & 31) >> 3), []).append((addr >> 2) & 7)
                            for x in range(4):
                                assert addr + x in buf, (S, mode, p, u, "read of an unwritten word")
                                reads[addr + x] = reads.get(addr + x, 0) + 1
                        for x in range(4):
                            jt = jb + 32 * b + j + x  # column in the tile
                            tk = tok0 + r
                            jg = n0 + jt
                            assert jg < I
                            if PRE:
                                assert buf[e + j + x] == ("act", (w13_row(layout, True, I, jg, 0), tk),
                                                          (w13_row(layout, True, I, jg, 1), tk)), (S, mode, p, u)
                            elif gated:
                                assert buf[e + j + x] == (w13_row(layout, True, I, jg, 0), tk), (S, mode, p, u)
                                assert buf[e + 64 * STR + j + x] == (w13_row(layout, True, I, jg, 1), tk)
                            else:
                                assert buf[e + j + x] == (jg, tk), (S, mode, p, u, buf[e + j + x], jg, tk)
                            key = (tk, jt)
                            assert key not in stored and key not in all_stored
                            stored.add(key)
            for key, gl in phase.items():
                assert len(gl) == len(set(gl)), (S, mode, "load bank conflict", key)
            assert all(v == 1 for v in reads.values()) and set(reads) <= set(buf)
            if full:
                assert set(reads) == set(buf)
        cols = {(64 * wgi if gated else 128 * wgi) + x for x in range(TC // 2)} if MB == 2 else \
            {(32 * wgi if gated else 64 * wgi) + x for x in range(TC // 2)}
        exp = {(tk, jt) for tk in range(min(S.BT, left)) for jt in cols if n0 + jt < I}
        assert stored == exp, (S, mode, wgi, len(stored), len(exp))
        all_stored |= stored
    assert all_stored == {(tk, jt) for tk in range(min(S.BT, left)) for jt in range(TC) if n0 + jt < I}


def check_gemm2_stores(S, H, n0, left):
    amap, bmap, _ = fragment_maps(S)
    seen = set()
    for ct in range(256):
        wgi, w, lane = ct >> 7, (ct >> 5) & 3, ct & 31
        gq, tq = lane >> 2, lane & 3
        rl = 64 * S.MB * wgi + 16 * w + gq
        for mb in range(S.MB):
            h = n0 + rl + 64 * mb
            for nh in range(S.NH):
                for i in range(S.NACC // 4):
                    m = S.WN * nh + 8 * i + 2 * tq  # (relative to m0)
                    for q in range(4):
                        dm, dh = q & 1, 8 * (q >> 1)
                        row, tk = acc_val(S, amap, bmap, wgi, w, lane, S.NH * mb + nh, 4 * i + q)
                        if not (m + dm < left and h + dh < H):
                            continue
                        # the value is the (token, h) it is stored to: W2 row = n0 + tile row
                        assert (weight_row(S, GEMM2, GU, 0, H, n0, row), tk) == (h + dh, m + dm), (S, ct, mb, nh, i, q)
                        key = (m + dm, h + dh)
                        assert key not in seen
                        seen.add(key)
    assert seen == {(m, h) for m in range(min(S.BT, left)) for h in range(n0, min(n0 + S.BW, H))}


def permute_prefix(n, e_loc, T, K, wg_bt):
    # group_offsets_block's sequential meaning
    G = []
    pre = [0, 0, 0, 0]
    for g, ng in enumerate(n):
        shared = g == e_loc
        G.append(dict(rows=ng, row0=T * K if shared else pre[0], tile0=pre[1], tile0_wg=pre[3]))
        if not shared:
            pre[0] += ng
        if ng > SKINNY_MAX:
            pre[1] += (ng + BM - 1) // BM
            pre[3] += (ng + wg_bt - 1) // wg_bt
        elif ng > 0:
            pre[2] += 1
    return G, pre[3]


def map_tile(S, mode, groups, t, ntn, Is, acts_gated):
    mt, nt = t // ntn, t % ntn
    lo, hi = 0, len(groups) - 1
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if groups[mid]["tile0_wg"] <= mt:
            lo = mid
        else:
            hi = mid - 1
    g = lo
    m0 = (mt - groups[g]["tile0_wg"]) * S.BT
    n0 = nt * tile_cols(S, mode)
    if mode == GEMM2:
        return True, g, m0, n0
    return (acts_gated[g] == (mode == GATED)) and n0 < Is[g], g, m0, n0


def launch_bound(S, mode, rows, groups, H, I_max):
    # launch<MODE, MB, BT, WF>: an upper bound of the tiles (every tiled group has > SKINNY_MAX rows)
    TC = tile_cols(S, mode)
    ntn = ((H if mode == GEMM2 else I_max) + TC - 1) // TC
    tg = min(rows // (SKINNY_MAX + 1), groups)
    return (rows // S.BT + tg + 1) * ntn


def wg_bt_of(blk, env, rows_per_expert):
    # moe_cuda.cu wg_bt_of: DeepSeek FP8 128; MXM_CUDA_WG_BT = 64 / 256 forces either, any other
    # value 128; by default 256 from MXM_CUDA_WG256_MIN_ROWS = 512 rows per expert, else 128
    if blk:
        return 128
    if env is not None:
        return env if env in (64, 256) else 128
    return 256 if rows_per_expert >= 512 else 128


def launch_shape(blk, wg_bt):
    # gemm_wgmma.cu launch_shape: the (MB, BT, BLK) launched for a.blk / a.wg_bt
    if blk:
        return (1, 128, True)
    if wg_bt == 256:
        return (1, 256, False)
    if wg_bt == 64:
        return (2, 64, False)
    return (2, 128, False)


def check_shape_choice(shapes):
    """Every a.wg_bt the forward can set (permute.cu counts its m-tiles of a.wg_bt rows) launches a
    shape whose map_tile steps m0 by BT = a.wg_bt; every shape modelled here is launched."""
    launched = {}
    for blk in (False, True):
        for env in (None, 0, 1, 32, 64, 96, 128, 192, 256, 512):
            for rpe in (1, 100, 511, 512, 4096):
                wg_bt = wg_bt_of(blk, env, rpe)
                key = launch_shape(blk, wg_bt)
                assert key[1] == wg_bt, (blk, env, rpe, wg_bt, key)
                launched.setdefault(key, set()).add(wg_bt)
    assert set(launched) == {S.key for S in shapes}, (sorted(launched), shapes)
    assert all(len(v) == 1 for v in launched.values())
    return {k: v.pop() for k, v in launched.items()}


def check_schedule(S, rng, trials, wg_bt):
    BT = S.BT
    # the permute's m-tiles: a.wg_bt rows (the value that launches this shape, check_shape_choice);
    # map_tile counts tile0_wg in BT tokens: they must agree
    assert launch_shape(S.BLK, wg_bt) == S.key and wg_bt == S.BT
    for trial in range(trials):
        e_loc = rng.randint(1, 40)
        shared = rng.random() < 0.5
        T, K = rng.randint(33, 3000), rng.randint(1, 8)
        groups = e_loc + (1 if shared else 0)
        n = []
        for g in range(e_loc):
            n.append(rng.choice([0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 383, 384, 385,
                                 511, 512, 513, rng.randint(0, 700)]))
        if shared:
            n.append(T)
        G, total = permute_prefix(n, e_loc, T, K, wg_bt)
        H = 32 * rng.randint(1, 40)
        I_r = 32 * rng.randint(1, 40)
        I_s = 32 * rng.randint(1, 40) if shared else 0
        Is = [I_r] * e_loc + ([I_s] if shared else [])
        I_max = max(Is)
        gated_r = rng.random() < 0.5
        gated_s = rng.random() < 0.5
        acts_gated = [gated_r] * e_loc + ([gated_s] if shared else [])
        modes = []
        if gated_r or (shared and gated_s):
            modes.append(GATED)
        if (not gated_r) or (shared and not gated_s):
            modes.append(PLAIN)
        for mode in modes + [GEMM2]:
            # the real rows (T K + T) are >= sum(n): the bound only grows with them
            ntn = ((H if mode == GEMM2 else I_max) + tile_cols(S, mode) - 1) // tile_cols(S, mode)
            assert total * ntn <= launch_bound(S, mode, sum(n), groups, H, I_max)
        # GEMM1: every (group, row, 32-column block) of tiled, gating-matching groups exactly
        # once across both kernels. A tile covers rows m0..min(m0 + BT, rows) - 1 of its group
        # (stored only below rows: check_epilogue), so it is enough that each group's m0 values
        # are exactly 0, BT, ... below rows, once per column block.
        out1 = {}
        for mode in modes:
            TC = tile_cols(S, mode)
            ntn = (I_max + TC - 1) // TC
            grid = rng.choice([1, 7, 132])
            for b in range(grid):
                for t in range(b, total * ntn, grid):
                    ok, g, m0, n0 = map_tile(S, mode, G, t, ntn, Is, acts_gated)
                    if not ok:
                        continue
                    assert G[g]["rows"] > SKINNY_MAX and 0 <= m0 < G[g]["rows"] and m0 % BT == 0
                    for jb in range(0, TC, 32):  # 32-column blocks, stored if n0+jb < I
                        if n0 + jb < Is[g]:
                            key = (g, m0, n0 + jb)
                            assert key not in out1
                            out1[key] = mode
        exp = {(g, m0, j) for g in range(groups) if n[g] > SKINNY_MAX for m0 in range(0, n[g], BT)
               for j in range(0, Is[g], 32)}
        assert set(out1) == exp, (S, trial, len(out1), len(exp))
        for (g, m0, j), mode in out1.items():
            assert (mode == GATED) == acts_gated[g]
        # GEMM2: (group, m-tile, 32-wide h block) exactly once
        ntn = (H + S.BW - 1) // S.BW
        out2 = set()
        for t in range(total * ntn):
            ok, g, m0, n0 = map_tile(S, GEMM2, G, t, ntn, Is, acts_gated)
            assert ok and 0 <= m0 < G[g]["rows"] and m0 % BT == 0
            for h in range(n0, min(n0 + S.BW, H), 32):
                key = (g, m0, h)
                assert key not in out2
                out2.add(key)
        exp2 = {(g, m0, h) for g in range(groups) if n[g] > SKINNY_MAX for m0 in range(0, n[g], BT)
                for h in range(0, H, 32)}
        assert out2 == exp2
        # counts region: cursor (groups+1) + 3 counts + skinny list (groups) fits 3 x (e_loc + 2)
        assert (groups + 1) + 3 + groups <= 3 * (e_loc + 2)


def check_k_tail(S):
    NA, NW = S.BT // 16, S.BW // 32
    for K in range(32, 32 * 10, 32):
        nk = (K + S.BK - 1) // S.BK
        KB = K // 32
        for kt in range(nk):
            k0 = kt * S.BK
            act, wts = {}, {}
            for tid in range(128):
                ac, ar = tid & 7, tid >> 3
                wc, wr = tid & 3, tid >> 2
                ka = k0 + 8 * ac < K  # activation chunk: 8 bf16 at k0 + 8 ac
                for i in range(NA):
                    for e in range(8):
                        act[(ar + 16 * i, 8 * ac + e)] = ka
                kw = k0 + 16 * wc < K  # code chunk: 16 codes at k0 + 16 wc
                for i in range(NW):
                    for e in range(16):
                        wts[(wr + 32 * i, 16 * wc + e)] = kw
            assert act == {(r, k): k0 + k < K for r in range(S.BT) for k in range(64)}
            assert wts == {(r, k): k0 + k < K for r in range(S.BW) for k in range(64)}
            # scale bytes: block 2kt read always (< KB), block 2kt+1 only when < KB (else 127:
            # 1.0 times zero codes)
            assert 2 * kt < KB
            if S.BLK:
                # the stage's activation scales (k-block k0 / 128) and the block's weight scales
                # (kt / 2) stay inside a row's KB128 = ceil(K / 128) scales (xs rows have HB =
                # ceil(H / 128), acts rows IB = ceil(I_max / 128) >= ceil(I / 128))
                KB128 = (K + 127) // 128
                assert 0 <= blk_xs_kb(k0) < KB128 and 0 <= blk_wsc_kb(kt) < KB128


# ---- DeepSeek FP8 (BLK) --------------------------------------------------------------------
# The kernel's BLK index expressions, one per function (a planted-bug run edits these lines).
def blk_xs_tok(S, f, i, tq):  # promote: xs[tok], tok = WN (f % NH) + 8 (i >> 2) + 2 tq + (i & 1)
    return S.WN * (f % S.NH) + 8 * (i >> 2) + 2 * tq + (i & 1)


def blk_wsc_idx(S, f, i):  # promote: wsc[f / NH][(i >> 1) & 1]
    return f // S.NH, (i >> 1) & 1


def blk_xs_kb(k0):  # producer: xs_row + xs_stride * (k0 / 128)
    return k0 // 128


def blk_first(kt, nk):  # consumer: blk_first = kt % 2 == 0
    return kt % 2 == 0


def blk_last(kt, nk):  # consumer: blk_last = kt % 2 == 1 || kt + 1 == nk
    return kt % 2 == 1 or kt + 1 == nk


def blk_wsc_kb(kt):  # consumer, at blk_first: wsc = __ldg(wsp[mb][rr] + kt / 2)
    return kt // 2


_blk_frags = {}


def blk_frag_list(S):
    """(rl, tq, f, i, tile row, token) of every consumer thread's accumulator element acc[f][i]:
    the (D row -> A row -> tile row) and (D column -> B row -> token) maps of fragment_maps."""
    if S.key not in _blk_frags:
        amap, bmap, _ = fragment_maps(S)
        out = []
        for ct in range(256):
            wgi, w, lane = ct >> 7, (ct >> 5) & 3, ct & 31
            gq, tq = lane >> 2, lane & 3
            rl = 64 * S.MB * wgi + 16 * w + gq
            for f in range(S.MB * S.NH):
                for i in range(S.NACC):
                    row, tk = acc_val(S, amap, bmap, wgi, w, lane, f, i)
                    out.append((rl, tq, f, i, row, tk))
        _blk_frags[S.key] = out
    return _blk_frags[S.key]


def check_blk_tokens(S):
    """(1) The promote's xs[tok] is the scale of the accumulator element's own token, for every
    (thread, f, i), and lies in the slot's scale region."""
    for rl, tq, f, i, row, tk in blk_frag_list(S):
        tok = blk_xs_tok(S, f, i, tq)
        assert tok == tk, (S, "xs token", rl, tq, f, i, tok, tk)
        assert S.OFF_XS <= S.OFF_XS + 4 * tok and S.OFF_XS + 4 * tok + 4 <= S.OFF_XS + 4 * S.BT <= S.SLOT


def check_blk_wsc(S, mode, layout, I, H, n0, stats):
    """(3) The promote's weight scale wsc[f / NH][(i >> 1) & 1] (loaded from scales + (r / 128)
    KB128, r = weight_row(rl + 64 mb + 8 rr)) is the scale of the 128-row block of the weight row
    whose codes the accumulator element multiplied."""
    wr = [weight_row(S, mode, layout, I, H, n0, r) for r in range(S.BW)]
    for rl, tq, f, i, row, tk in blk_frag_list(S):
        mb, rr = blk_wsc_idx(S, f, i)
        assert 0 <= mb < S.MB and rr in (0, 1)
        r_sc, r_true = wr[rl + 64 * mb + 8 * rr], wr[row]
        if r_true < 0:  # zero-filled codes: part is 0, the scale does not matter (wsp null: 0)
            continue
        assert r_sc >= 0 and r_sc // 128 == r_true // 128, (S, mode, layout, I, n0, rl, f, i, r_sc, r_true)
        # the element with the other fragment row (i ^ 2): a different 128-row block?
        other = wr[row ^ 8]
        if other >= 0 and other // 128 != r_true // 128:
            stats["rr"] = stats.get("rr", 0) + 1
    if mode == GATED:  # gate and up of one column (same thread) in different 128-row blocks
        for j in range(n0, min(n0 + tile_cols(S, mode), I)):
            if w13_row(layout, True, I, j, 0) // 128 != w13_row(layout, True, I, j, 1) // 128:
                stats["gu", layout] = stats.get(("gu", layout), 0) + 1


def check_blk_xs_copies(S):
    """(2) Placement: producer thread tid's 4-byte copy at slot + OFF_XS + 4 tid lies in the slot,
    after the activation and code regions (no byte shared with their 16-byte copies), every
    token row of the tile once, 4-byte aligned; the promote reads exactly these words."""
    fragment_maps(S)
    act_bytes, code_bytes = _written[S.key]
    assert max(act_bytes) < S.SLOT_ACT <= min(code_bytes) and max(code_bytes) < S.OFF_XS
    xs = {}
    for tid in range(128):  # the producer warpgroup
        if tid < S.BT:
            off = S.OFF_XS + 4 * tid
            assert off % 4 == 0
            for b in range(4):
                assert S.OFF_XS <= off + b < S.SLOT and off + b not in act_bytes and off + b not in code_bytes
                assert off + b not in xs
                xs[off + b] = tid
    # every token row of the tile has its scale in the slot (the promote reads tokens 0..BT-1)
    assert sorted(set(xs.values())) == list(range(S.BT)), (S, "token rows without a scale copy")
    for rl, tq, f, i, row, tk in blk_frag_list(S):
        tok = blk_xs_tok(S, f, i, tq)
        assert all(xs.get(S.OFF_XS + 4 * tok + b) == tok for b in range(4))


def check_blk_blocks(Kmax=4096):
    """(4) blk_first / blk_last partition the stages 0..nk-1 into the 128-blocks of K: block kb is
    stages 2 kb (first) and 2 kb + 1 (last) or the final stage alone (a 64-wide or, K % 64 = 32,
    32-wide block); every stage of block kb has kt / 2 = k0 / 128 = kb."""
    for K in range(32, Kmax + 1, 32):
        nk = (K + 63) // 64
        blocks, cur = [], None
        for kt in range(nk):
            if blk_first(kt, nk):
                assert cur is None, (K, kt, "block opened twice")
                cur = [kt]
            else:
                assert cur is not None, (K, kt)
                cur.append(kt)
            if blk_last(kt, nk):
                blocks.append(cur)
                cur = None
        assert cur is None, (K, "the last block is never promoted")
        assert [kt for b in blocks for kt in b] == list(range(nk))
        assert len(blocks) == (K + 127) // 128
        for kb, b in enumerate(blocks):
            assert blk_wsc_kb(b[0]) == kb
            for kt in b:
                assert kt // 2 == (64 * kt) // 128 == kb == blk_xs_kb(64 * kt), (K, kb, kt)
            assert (64 * b[0], min(64 * (b[-1] + 1), K)) == (128 * kb, min(128 * kb + 128, K))


def check_blk_pipeline(S, rng, trials):
    """(2) + (4) through the ring: the producer's xs copies (a.xs / a.acts by the kernel's
    addresses), the consumers' part (scale-d 0 at the block's first k16 step), the weight-scale
    load at blk_first, the promote at blk_last reading xs from that stage's slot, and the stage
    releases, over sequences of tiles of different K (the ring carries over tiles). The producer
    runs as far ahead as the empty barriers allow: a slot read after its release would see the
    copy of a later stage."""
    BT, STAGES, SLOT = S.BT, S.STAGES, S.SLOT
    for trial in range(trials):
        mode = (GATED, PLAIN, GEMM2)[trial % 3]
        T = rng.randint(40, 600)
        H = 32 * rng.randint(1, 30)
        ng = [rng.choice([33, 100, 128, 129, 255, 256, 300, rng.randint(33, 400)]) for _ in range(rng.randint(1, 4))]
        Is = [32 * rng.randint(1, 30) for _ in ng]
        I_max = max(Is)
        HB, IB = (H + 127) // 128, (I_max + 127) // 128
        row0s = [sum(ng[:g]) for g in range(len(ng))]
        row_token = [rng.randrange(T) for _ in range(sum(ng))]
        XS = {t * HB + b: ("xs", t, b) for t in range(T) for b in range(HB)}  # prepare.cuh's a.xs
        ACTS = {r * IB + b: ("acts", r, b) for r in range(sum(ng)) for b in range(IB)}  # quantize.cu's a.acts
        mtiles = [(g, m0) for g in range(len(ng)) for m0 in range(0, ng[g], BT)]
        tiles = [rng.choice(mtiles) for _ in range(rng.randint(1, 6))]
        its = []  # (tile, kt) in the order both warpgroups walk them
        for ti, (g, m0) in enumerate(tiles):
            K = Is[g] if mode == GEMM2 else H
            its += [(ti, kt) for kt in range((K + 63) // 64)]
        mem = {}  # slot byte offset (from sbase) -> (iteration, value) of the scale words
        released = set()
        pj = [0]

        def produce():
            while pj[0] < len(its) and (pj[0] < STAGES or pj[0] - STAGES in released):
                it = pj[0]
                ti, kt = its[it]
                g, m0 = tiles[ti]
                rows, row0 = ng[g], row0s[g]
                k0 = 64 * kt
                s = it % STAGES
                for tid in range(128):
                    if tid >= BT:
                        continue
                    if m0 + tid < rows:
                        if mode == GEMM2:
                            idx = (row0 + m0 + tid) * IB + blk_xs_kb(k0)
                            v = ACTS.get(idx)
                        else:
                            idx = row_token[row0 + m0 + tid] * HB + blk_xs_kb(k0)
                            v = XS.get(idx)
                        assert v is not None, (S, "xs copy out of bounds", mode, idx)
                    else:
                        v = 0.0  # 0 bytes copied: zero fill
                    mem[s * SLOT + S.OFF_XS + 4 * tid] = (it, v)
                pj[0] += 1

        def release(it):
            assert it not in released
            released.add(it)
            produce()

        produce()
        it = 0
        for ti, (g, m0) in enumerate(tiles):
            K = Is[g] if mode == GEMM2 else H
            KB128 = (K + 127) // 128
            rows, row0 = ng[g], row0s[g]
            nk = (K + 63) // 64
            part, wsc_kb, done = None, None, []
            for kt in range(nk):
                s = it % STAGES
                first, last = blk_first(kt, nk), blk_last(kt, nk)
                if first:
                    wsc_kb = blk_wsc_kb(kt)
                    assert 0 <= wsc_kb < KB128
                assert pj[0] > it, (S, "consumer waits on a stage the producer cannot fill")
                for ks in range(4):
                    if first and ks == 0:
                        part = set()  # scale-d = 0
                    assert part is not None
                    k = 64 * kt + 16 * ks
                    if k < K:  # zero-filled past K (check_k_tail)
                        part.add(k)
                    if ks == 1 and kt > 0:
                        release(it - 1)
                if last:
                    kb = kt // 2  # the block this stage ends
                    assert part == set(range(128 * kb, min(128 * kb + 128, K), 16)), (S, K, kt, "part")
                    assert wsc_kb == kb, (S, K, kt, "weight scales of another block")
                    for tok in range(BT):
                        addr = s * SLOT + S.OFF_XS + 4 * tok
                        assert addr in mem and mem[addr][0] == it, (S, "xs slot overwritten or unwritten", it)
                        v = mem[addr][1]
                        if m0 + tok >= rows:
                            assert v == 0.0
                        elif mode == GEMM2:
                            assert v == ("acts", row0 + m0 + tok, kb), (S, mode, K, kt, tok, v, kb)
                        else:
                            assert v == ("xs", row_token[row0 + m0 + tok], kb), (S, mode, K, kt, tok, v, kb)
                    done.append(kb)
                    part = None
                it += 1
            release(it - 1)
            assert done == list(range(KB128)), (S, K, done, "128-blocks promoted")
        assert pj[0] == len(its) and released == set(range(len(its)))


if __name__ == "__main__":
    t_start = time.time()
    rng = random.Random(1)
    # the four shapes the kernel instantiates: MXFP8 (MB, BT) = (2, 128), (1, 256), (2, 64),
    # DeepSeek FP8 (1, 128)
    shapes = (Shape(2, 128), Shape(1, 256), Shape(2, 64), Shape(1, 128, True))
    names = "MB=2 BT=128, MB=1 BT=256, MB=2 BT=64, BLK (1,128)"
    wg_bts = check_shape_choice(shapes)
    print("shape choice: a.wg_bt %s launches BT = a.wg_bt (%s): OK"
          % ("/".join(str(wg_bts[S.key]) for S in shapes), names))
    cases_op = ((320, 416, 0), (320, 416, 1), (320, 416, 2), (96, 160, 0), (1856, 2688, 7), (1856, 2688, 14))
    blk_stats = {}
    for S in shapes:
        check_smem(S)
        check_affine(S)
        for mode in (GATED, PLAIN, GEMM2):
            TC = tile_cols(S, mode)
            for layout in (GU, UG, IL) if mode == GATED else (GU,):
                for I, H, nt in cases_op:
                    n0 = nt * TC
                    if n0 >= (H if mode == GEMM2 else I):
                        continue
                    check_operands(S, mode, layout, I, H, n0)
                    if S.BLK:
                        check_blk_wsc(S, mode, layout, I, H, n0, blk_stats)
    print("shared memory (%s): stages on 1024-byte atoms, regions in order, <= 227 KB (%s bytes): OK"
          % (names, "/".join(str(S.smem_bytes) for S in shapes)))
    print("operands (%s): codes/activations placement = fragment/descriptor reads (every token block, "
          "N = WN); scale rows = code rows; gate/up pairing: OK" % names)
    for S in shapes:
        for mode in (GATED, PLAIN):
            TC = tile_cols(S, mode)
            part = 97 if 97 < S.BT else 37  # a partial tile
            cases = [(GU, 4096, 0, S.BT), (GU, 320, 2 * TC if 2 * TC < 320 else TC, part), (GU, 64, 0, 300)]
            if mode == GATED:
                cases += [(UG, 4096, TC, S.BT + 5), (IL, 4096, 0, 1), (IL, 160, 0, S.BT)]
            for layout, I, n0, left in cases:
                check_epilogue(S, mode, layout, I, n0, left)
    print("GEMM1 epilogue (%s; gated, plain): buffer written once per pass, read once, right (token, j) "
          "and gate/up, conflict-free, every (token, j) stored once: OK" % names)
    for S in shapes:
        for H, n0, left in ((4096, 0, S.BT), (416, S.BW, 100 if 100 < S.BT else 45), (160, 0, 3)):
            check_gemm2_stores(S, H, n0, left)
    print("GEMM2 stores (%s): every (token, h) of a tile once, matching the D fragment: OK" % names)
    # The token-block offsets WN nh (B descriptor, GEMM2 rows, the promote's token below) differ
    # from 128 nh only where NH = 2 and WN = 64, which no instantiated shape has (NH = 2 only at
    # BT = 256, WN = 128); so they are also checked on a hypothetical (MB, BT) = (1, 128) of two
    # m64n64k16 token blocks (WN = 64, NH = 2, acc[2][32]; its GEMM1 epilogue is not modelled).
    HW = Shape(1, 128, WN=64)
    assert (HW.NH, HW.NACC) == (2, 32)
    for mode in (GATED, PLAIN, GEMM2):
        for layout in (GU, UG, IL) if mode == GATED else (GU,):
            check_operands(HW, mode, layout, 320, 416, 0)
    for H, n0, left in ((4096, 0, HW.BT), (416, HW.BW, 100), (160, 0, 3)):
        check_gemm2_stores(HW, H, n0, left)
    print("token blocks of WN = 64 (hypothetical %s): descriptor + nh WN rows, GEMM2 rows m0 + WN nh: OK"
          % HW)
    sched_trials = {(2, 128, False): 1000, (1, 256, False): 1000, (2, 64, False): 1000, (1, 128, True): 600}
    for S in shapes:
        check_schedule(S, rng, sched_trials[S.key], wg_bts[S.key])
    print("tile schedule (%s: %s random routings, grids 1/7/132): every output "
          "(group, row, column block) exactly once: OK"
          % (names, "/".join(str(sched_trials[S.key]) for S in shapes)))
    for S in shapes:
        check_k_tail(S)
    print("K tails (%s): zero-fill predicates exact; BLK scale indices inside the rows: OK" % names)
    # DeepSeek FP8 specifics. The promote's index math is generic in (MB, BT): besides the
    # instantiated (1, 128), its consumer side is also checked on hypothetical BLK (2, 128),
    # (1, 256), (2, 64) and (1, 128) on WN = 64 shapes (not instantiated: (1, 256) would not fit
    # shared memory with 6 stages, and its 128 producer threads copy only 128 of its 256 tokens'
    # scales).
    SB = shapes[3]
    assert SB.BLK
    hyp = (Shape(2, 128, True), Shape(1, 256, True), Shape(2, 64, True), Shape(1, 128, True, WN=64))
    for S in (SB,) + hyp:
        check_blk_tokens(S)
    print("BLK (1): the promote's xs[tok] is the accumulator element's token, every (thread, f, i) "
          "(also hypothetical BLK %s): OK" % ", ".join(map(repr, hyp)))
    check_blk_xs_copies(SB)
    check_blk_pipeline(SB, rng, 150)
    print("BLK (2): xs copies at OFF_XS + 4 tid (%d..%d of the %d-byte slot, clear of activations and "
          "codes), token row tid's scale of k-block k0/128 (a.xs by token, a.acts by row), zero past "
          "the rows; every stage of a block carries its scales, the promote reads its own stage "
          "before releasing it (150 random tile sequences through the 6-stage ring): OK"
          % (SB.OFF_XS, SB.OFF_XS + 4 * SB.BT - 1, SB.SLOT))
    for S in hyp:
        for mode in (GATED, PLAIN, GEMM2):
            for layout in (GU, UG, IL) if mode == GATED else (GU,):
                check_blk_wsc(S, mode, layout, 320, 416, 0, {})
    assert blk_stats.get(("gu", GU), 0) > 0 and blk_stats.get(("gu", UG), 0) > 0 and blk_stats.get("rr", 0) > 0
    print("BLK (3): the promote's weight scale is the 128-row block of the row it multiplies (GU/UG/IL, "
          "I = 320, 96, 1856; gate/up in different blocks: %d GU / %d UG / %d IL columns; elements whose "
          "other fragment row is in another block: %d): OK"
          % (blk_stats.get(("gu", GU), 0), blk_stats.get(("gu", UG), 0), blk_stats.get(("gu", IL), 0),
             blk_stats.get("rr", 0)))
    check_blk_blocks()
    print("BLK (4): blk_first / blk_last partition the stages into the 128-blocks of K (K = 32..4096), "
          "kt / 2 = k0 / 128: OK")
    print("%.1f s" % (time.time() - t_start))
