#!/usr/bin/env python3
# Run: python3 tests/oracle/test_wgmma_layout.py (no GPU, no numpy; CTest: py_test_wgmma_layout).
# CPU model of the index math of src/cuda/gemm_wgmma.cu and of the tile0_wg prefix in
# src/cuda/permute.cu, for both tile shapes of wgmma_kernel<MODE, MB> (a.wg_bt):
#  - MB = 2 (a.wg_bt = 128): 256 weight rows x 128 tokens; each consumer warpgroup owns two m64
#    weight blocks, one 128-token half (acc[NH mb + nh], NH = 1);
#  - MB = 1 (a.wg_bt = 256): 128 weight rows x 256 tokens; each consumer owns one m64 block and
#    issues two m64n128k16 per k16 step on it, token half nh through the B descriptor + 16 KB
#    (acc[NH mb + nh], NH = 2); gated: fragment rows g / g + 8 are gate / up of one column.
# Hardware semantics assumed from the PTX ISA (as the prototype's model did, docs/wgmma.md):
# 128B swizzle = address bits [4:6] ^= [7:9]; wgmma A-register fragment = the mma.m16n8k16 A layout per warp (warp w of the warpgroup holds
# rows 16w..16w+15); wgmma m64nNk16 f32 D fragment: d[i] of lane l in warp w is row
# 16w + l/4 + 8((i>>1)&1), column 8(i>>2) + 2(l%4) + (i&1); 16-byte shared loads are served
# in four phases of 8 consecutive lanes.
# Checks, per shape (MB = 2, 1) and mode (gated GEMM1, plain GEMM1, GEMM2):
#  0. the shared-memory layout (wg_shape<MB>): stages 1024-aligned, epilogue buffers and
#     barriers after the ring, the total within 227 KB;
#  1. producer placement of codes / activations (BW/32 code and BT/16 activation chunks per
#     thread) vs. the consumers' fragment reads and the B descriptor reads, token half nh at
#     + 128 rows x 128 B (every A/B element is the intended (tile row, k) / (token, k); the
#     m64 blocks partition the BW tile rows, the halves the BT tokens); GEMM2's affine row
#     counts equal the row predicates;
#  2. the weight row behind every fragment row (codes and scale bytes agree, scale block of
#     every k) and the gated pairing: MB = 2, acc[0][i] and acc[1][i] of one thread are gate
#     and up of one (column j, token); MB = 1, fragment rows g and g + 8 (acc[nh][i], i + 2);
#  3. the GEMM1 epilogue (gemm1_epilogue, all four buffer geometries), with the accumulators'
#     symbolic contents (weight row, token) from 1-2: each pass writes every (buffer row,
#     column) exactly once and inside the buffer, the readers (one thread per (token, 32-column
#     block)) read each once, and what they read is the right (token, j) (gate, up; MB = 1 gated:
#     the activated pair); 32-bit stores hit 32 distinct banks per warp and i, float4 reads
#     distinct 4-bank groups per 8-lane phase; every (token, j) of the tile (below the group's
#     rows and I) is stored once;
#  4. GEMM2 stores: every (token, h) of a tile once, holding that (token, h);
#  5. the tile schedule: random group sizes through the permute prefix (tile0_wg of a.wg_bt
#     rows, counts[2]) and map_tile over t = 0..counts[2]*ntn-1: every valid output element
#     (row, column) of every tiled group is produced by exactly one tile, and nothing outside
#     the group's rows / I / H; the launch's grid bound covers the tiles;
#  6. K tails (K % 64 = 32): the zero-fill predicates cover exactly k >= K.
import random
import time

SKINNY_MAX, BM = 32, 64
GATED, PLAIN, GEMM2 = 0, 1, 2
IL, UG, GU = 2, 1, 0  # MXM_W13_INTERLEAVED, MXM_W13_UP_GATE, gate/up (the SPEC's order)
TAB_MAX = 512


class Shape:  # wg_shape<MB>
    def __init__(self, MB):
        assert MB in (1, 2)
        self.MB = MB
        self.NH = 2 // MB
        self.BT = 128 * self.NH
        self.BW = 128 * MB
        self.BK = 64
        self.SLOT_ACT = self.BT * self.BK * 2
        self.SLOT_W = self.BW * self.BK
        self.SLOT = self.SLOT_ACT + self.SLOT_W
        self.STAGES = 4
        self.EPI_BYTES = 128 * 68 * 4 if MB == 2 else 128 * 36 * 4
        self.OFF_EPI = self.STAGES * self.SLOT
        self.OFF_BAR = self.OFF_EPI + 2 * self.EPI_BYTES
        self.OFF_TAB = self.OFF_BAR + 16 * self.STAGES
        self.smem_bytes = self.OFF_TAB + 4 * TAB_MAX + 1024

    def __repr__(self):
        return "MB=%d" % self.MB


def w13_row(layout, gated, I, j, half):
    if not gated:
        return j
    if layout == IL:
        return 2 * j + half
    first = 1 if layout == UG else 0
    return (0 if half == first else I) + j


def tile_cols(S, mode):
    return S.BW // 2 if mode == GATED else S.BW


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
    assert S.smem_bytes <= 227 * 1024
    assert 64 * 68 * 4 <= Shape(1).EPI_BYTES  # plain MB = 1 epilogue pass
    # the descriptor's 14-bit start address field holds every B start (sbase < 1024 extra)
    assert (1024 + S.STAGES * S.SLOT) < (1 << 18)


_maps = {}


def fragment_maps(S):
    """Producer placement vs. consumer reads (mode independent). Returns
    amap[(wgi, mb)][r] = tile row of wgmma A row r of consumer wgi's block mb (from the codes the
    fragment registers decode), bmap[nh][n] = token of B row n of half nh (from the descriptor),
    and areg[(wgi, w, lane, mb, rr)] = tile row of the thread's fragment rows g + 8 rr."""
    if S.MB in _maps:
        return _maps[S.MB]
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
    # 16 KB per token half); the swizzle acts on absolute addresses (sbase is 1024-aligned)
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
    bmap = {}
    for s in range(S.STAGES):
        for ks in range(4):
            for nh in range(S.NH):
                start = ((s * S.SLOT + ks * 32) >> 4) + ((nh * 128 * 128) >> 4)  # desc - desc0
                start <<= 4
                for n in range(128):
                    for kk in range(16):
                        lin = start + (n // 8) * 1024 + (n % 8) * 128 + 2 * kk
                        sw = lin ^ (((lin >> 7) & 7) << 4)
                        rel = sw - s * S.SLOT
                        assert 0 <= rel < S.SLOT_ACT, (S, s, ks, nh, n)
                        tok, k = act[rel]
                        assert k == 16 * ks + kk, (S, s, ks, nh, n, kk)
                        assert bmap.setdefault(nh, {}).setdefault(n, tok) == tok
    seen = []
    for nh, m in bmap.items():
        for n in range(128):
            assert m[n] == 128 * nh + n, (S, nh, n, m[n])
        seen += m.values()
    assert sorted(seen) == list(range(S.BT))
    _maps[S.MB] = (amap, bmap, areg)
    return _maps[S.MB]


def acc_val(S, amap, bmap, wgi, w, lane, f, i):
    # wgmma(acc[NH mb + nh], fr[ks][mb], desc + half nh): D row = A row of block mb, D column =
    # B row of half nh. Returns (tile row, token in the tile).
    mb, nh = f // S.NH, f % S.NH
    assert 0 <= f < S.MB * S.NH and f == S.NH * mb + nh and 0 <= i < 64
    drow, dcol = d_frag(w, lane, i)
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
    """gemm1_epilogue<MODE, MB> for a tile at column n0 with `left` = rows - m0 tokens left."""
    amap, bmap, _ = fragment_maps(S)
    MB = S.MB
    gated = mode == GATED
    PRE = gated and MB == 1
    STR = 36 if PRE else 68
    PT = (64 if gated else 128) if MB == 2 else (128 if gated else 64)
    NBLK = 1 if PRE else 2
    PASSES = 2 if gated else (2 if MB == 2 else 4)
    TC = tile_cols(S, mode)
    nwords = S.EPI_BYTES // 4

    def wrow(tile_row):
        return weight_row(S, mode, layout, I, 0, n0, tile_row)

    all_stored = set()
    for wgi in range(2):
        stored = set()
        for p in range(PASSES):
            buf = {}
            for i in range(64):
                banks = {}  # (store statement, warp) -> banks
                for w in range(4):
                    for lane in range(32):
                        gq, tq = lane >> 2, lane & 3
                        rr = (i >> 1) & 1
                        c = 16 * w + gq + 8 * rr
                        tok = 8 * (i >> 2) + 2 * tq + (i & 1)  # token within the 128-token half

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
                for i in range(16):
                    m = 128 * nh + 8 * i + 2 * tq  # (relative to m0)
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
    # launch<MODE, MB>: an upper bound of the tiles (every tiled group has > SKINNY_MAX rows)
    TC = tile_cols(S, mode)
    ntn = ((H if mode == GEMM2 else I_max) + TC - 1) // TC
    tg = min(rows // (SKINNY_MAX + 1), groups)
    return (rows // S.BT + tg + 1) * ntn


def check_schedule(S, rng, trials):
    BT = S.BT
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
        G, total = permute_prefix(n, e_loc, T, K, BT)
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


if __name__ == "__main__":
    t_start = time.time()
    rng = random.Random(1)
    shapes = (Shape(2), Shape(1))
    for S in shapes:
        check_smem(S)
        check_affine(S)
        for mode in (GATED, PLAIN, GEMM2):
            TC = tile_cols(S, mode)
            for layout in (GU, UG, IL) if mode == GATED else (GU,):
                for I, H, nt in ((320, 416, 0), (320, 416, 1), (320, 416, 2), (96, 160, 0), (1856, 2688, 7), (1856, 2688, 14)):
                    n0 = nt * TC
                    if n0 >= (H if mode == GEMM2 else I):
                        continue
                    check_operands(S, mode, layout, I, H, n0)
    print("operands (MB=2, MB=1): codes/activations placement = fragment/descriptor reads (both token halves); "
          "scale rows = code rows; gate/up pairing: OK")
    for S in shapes:
        for mode in (GATED, PLAIN):
            TC = tile_cols(S, mode)
            cases = [(GU, 4096, 0, S.BT), (GU, 320, 2 * TC if 2 * TC < 320 else TC, 97), (GU, 64, 0, 300)]
            if mode == GATED:
                cases += [(UG, 4096, TC, S.BT + 5), (IL, 4096, 0, 1), (IL, 160, 0, S.BT)]
            for layout, I, n0, left in cases:
                check_epilogue(S, mode, layout, I, n0, left)
    print("GEMM1 epilogue (MB=2, MB=1; gated, plain): buffer written once per pass, read once, right (token, j) "
          "and gate/up, conflict-free, every (token, j) stored once: OK")
    for S in shapes:
        for H, n0, left in ((4096, 0, S.BT), (416, S.BW, 100), (160, 0, 3)):
            check_gemm2_stores(S, H, n0, left)
    print("GEMM2 stores (MB=2, MB=1): every (token, h) of a tile once, matching the D fragment: OK")
    for S, trials in ((shapes[0], 1000), (shapes[1], 1000)):
        check_schedule(S, rng, trials)
    print("tile schedule (MB=2, MB=1: 1000 random routings each, grids 1/7/132): every output "
          "(group, row, column block) exactly once: OK")
    for S in shapes:
        check_k_tail(S)
    print("K tails (MB=2, MB=1): zero-fill predicates exact: OK")
    print("%.1f s" % (time.time() - t_start))
