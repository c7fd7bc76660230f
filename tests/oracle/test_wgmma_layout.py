#!/usr/bin/env python3
# Run: python3 tests/oracle/test_wgmma_layout.py (no GPU, no numpy; CTest: py_test_wgmma_layout).
# CPU model of the index math of src/cuda/gemm_wgmma.cu and of the tile0_wg prefix in
# src/cuda/permute.cu. Hardware semantics assumed from the PTX ISA (as the prototype's model did, docs/wgmma.md):
# 128B swizzle = address bits [4:6] ^= [7:9]; wgmma A-register fragment = the mma.m16n8k16 A layout per warp (warp w of the warpgroup holds
# rows 16w..16w+15); wgmma m64nNk16 f32 D fragment: d[i] of lane l in warp w is row
# 16w + l/4 + 8((i>>1)&1), column 8(i>>2) + 2(l%4) + (i&1).
# Checks, per mode (gated GEMM1, plain GEMM1, GEMM2):
#  1. producer placement of codes / activations vs. the consumers' fragment reads and the B
#     descriptor reads (every A/B element is the intended (weight row, k) / (token, k));
#  2. the weight row behind every fragment row (codes and scale bytes agree), and the gated
#     pairing: acc[0][i] and acc[1][i] of one thread are gate and up of one (column j, token);
#  3. the GEMM1 epilogue buffer: each pass writes every (buffer row, column) exactly once, the
#     readers' units read each once, and what they read is the right (token, j) (gate, up);
#     writes and reads are bank-conflict free; every (token, j) of the tile is stored once;
#  4. GEMM2 stores: every (token, h) of a tile once;
#  5. the tile schedule: random group sizes through the permute prefix (tile0_wg, counts[2]) and
#     map_tile over t = 0..counts[2]*ntn-1: every valid output element (row, column) of every
#     tiled group is produced by exactly one tile, and nothing outside the group's rows / I / H;
#  6. K tails (K % 64 = 32): the zero-fill predicates cover exactly k >= K.
import random

SKINNY_MAX, BM, WG_BM = 32, 64, 128
WG_BW, WG_BT, WG_BK = 256, 128, 64
SLOT_ACT = WG_BT * WG_BK * 2
EPI_STRIDE = 68
GATED, PLAIN, GEMM2 = 0, 1, 2
IL, UG, GU = 2, 1, 0  # MXM_W13_INTERLEAVED, MXM_W13_UP_GATE, gate/up (the SPEC's order)


def w13_row(layout, gated, I, j, half):
    if not gated:
        return j
    if layout == IL:
        return 2 * j + half
    first = 1 if layout == UG else 0
    return (0 if half == first else I) + j


def tile_cols(mode):
    return WG_BW // 2 if mode == GATED else WG_BW


def weight_row(mode, layout, I, H, n0, rl):
    if mode == GATED:
        j = n0 + 64 * (rl >> 7) + (rl & 63)
        return w13_row(layout, True, I, j, (rl >> 6) & 1) if j < I else -1
    n = n0 + rl
    return n if n < (H if mode == GEMM2 else I) else -1


def check_operands(mode, layout, I, H, n0):
    # producer: weight codes (tile row, k) at slot byte offsets
    place = {}
    for tid in range(128):
        wc, wr = tid & 3, tid >> 2
        w_sw = (wc ^ ((wr >> 1) & 3)) << 4
        for i in range(8):
            r = wr + 32 * i
            for b in range(16):
                off = SLOT_ACT + r * 64 + w_sw + b
                assert off not in place
                place[off] = (r, 16 * wc + b)
    assert len(place) == 256 * 64
    # consumers: fragment registers -> (tile row, k); the row's weight row == the scale row
    frag_row = {}  # (wgi, w, lane, mb, rr) -> weight row
    for ct in range(256):
        wgi, w, lane = ct >> 7, (ct >> 5) & 3, ct & 31
        g, t = lane >> 2, lane & 3
        rl = 128 * wgi + 16 * w + g
        sw = (g >> 1) & 3
        a_thr = SLOT_ACT + rl * 64 + 2 * t
        for ks in range(4):
            koff = (ks ^ sw) << 4
            for mb in range(2):
                p = a_thr + mb * 64 * 64 + koff
                for reg, off in ((0, p), (1, p + 512), (2, p + 8), (3, p + 520)):
                    row_in_frag = g + (8 if reg in (1, 3) else 0)
                    col = 2 * t + (8 if reg in (2, 3) else 0)
                    exp_row = 128 * wgi + 64 * mb + 16 * w + row_in_frag  # wgmma A row of block mb
                    for h in range(2):
                        assert place[off + h] == (exp_row, 16 * ks + col + h)
                    # scale row of this register (sp[mb][rr], rr = reg & 1) is the same tile row
                    rr = reg & 1
                    assert exp_row == rl + 64 * mb + 8 * rr
        for mb in range(2):
            for rr in range(2):
                frag_row[(wgi, ct >> 5 & 3, lane, mb, rr)] = weight_row(mode, layout, I, H, n0, rl + 64 * mb + 8 * rr)
    # gated pairing: rows of block 0 (gate) and block 1 (up) of one fragment are one column j
    if mode == GATED:
        for (wgi, w, lane, mb, rr), r in frag_row.items():
            if mb:
                continue
            up = frag_row[(wgi, w, lane, 1, rr)]
            j = n0 + 64 * wgi + 16 * w + (lane >> 2) + 8 * rr
            if j < I:
                assert r == w13_row(layout, True, I, j, 0) and up == w13_row(layout, True, I, j, 1), (r, up, j)
            else:
                assert r == -1 and up == -1
    # activations: producer placement vs. the 128B-swizzle descriptor (advanced 32 B per k16)
    act = {}
    for tid in range(128):
        ac, ar = tid & 7, tid >> 3
        a_sw = (ac ^ (ar & 7)) << 4
        for i in range(8):
            r = ar + 16 * i
            for e in range(8):
                off = r * 128 + a_sw + 2 * e
                assert off not in act
                act[off] = (r, 8 * ac + e)
    for ks in range(4):
        for n in range(128):
            for kk in range(16):
                lin = ks * 32 + (n // 8) * 1024 + (n % 8) * 128 + 2 * kk
                sw = lin ^ (((lin >> 7) & 7) << 4)
                assert act[sw] == (n, 16 * ks + kk)


def d_frag(w, lane, i):
    return 16 * w + (lane >> 2) + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)


def check_epilogue(mode):
    # returns the set of (tile row rl within the consumer's... ) -> checks in place
    for wgi in range(2):
        stored = {}  # (token, column j offset in tile) -> count
        for p in range(2):
            buf = {}
            bank_ok = True
            for i in range(64):
                per_bank = {}
                for w in range(4):
                    for lane in range(32):
                        c, tok = d_frag(w, lane, i)
                        if mode == GATED:
                            if (i >> 5) != p:
                                continue
                            for mb, base in ((0, 0), (1, 64)):
                                addr = (tok - 64 * p + base) * EPI_STRIDE + c
                                assert 0 <= tok - 64 * p < 64
                                assert addr not in buf
                                # what it holds: (block mb = gate/up, token, tile row of the consumer)
                                buf[addr] = (mb, tok, c)
                                if mb == 0:
                                    per_bank.setdefault((w, addr % 32), set()).add(addr)
                        else:
                            addr = tok * EPI_STRIDE + c
                            assert addr not in buf
                            buf[addr] = (p, tok, c)
                            per_bank.setdefault((w, addr % 32), set()).add(addr)
                if any(len(v) > 1 for v in per_bank.values()):
                    bank_ok = False
            assert bank_ok, "epilogue fragment stores conflict"
            assert len(buf) == (128 * 64 if mode == GATED else 128 * 64)
            units = 128 if mode == GATED else 256
            for w in range(4):
                for u in (u0 + 4 * q for u0 in range(w, units, 16) for q in range(4)):  # 4 per iteration
                    assert u < units
                    r, b = u >> 1, u & 1
                    tok = 64 * p + r if mode == GATED else r
                    words = set()
                    for lane in range(32):
                        col = 32 * b + lane
                        if mode == GATED:
                            g = buf[r * EPI_STRIDE + col]
                            up = buf[(r + 64) * EPI_STRIDE + col]
                            assert g == (0, tok, col) and up == (1, tok, col)
                            jt = 64 * wgi + col  # column in the tile (jb = n0 + 64 wgi)
                        else:
                            assert buf[r * EPI_STRIDE + col] == (p, tok, col)
                            jt = 128 * wgi + 64 * p + col  # the acc[p] block's tile row = column
                        words.add((r * EPI_STRIDE + col) % 32)
                        key = (tok, jt)
                        assert key not in stored
                        stored[key] = 1
                    assert len(words) == 32  # conflict-free reads
        ncols = 64 if mode == GATED else 128
        assert len(stored) == 128 * ncols
        assert all((wgi * ncols <= j < (wgi + 1) * ncols) for (_, j) in stored)
    # and for plain: the fragment's weight tile row (consumer wgi, block p, row c) = 128 wgi + 64 p + c
    # is the column jt stored: checked through buf contents (p, tok, c) above.


def check_gemm2_stores():
    seen = set()
    for ct in range(256):
        wgi, w, lane = ct >> 7, (ct >> 5) & 3, ct & 31
        gq, tq = lane >> 2, lane & 3
        rl = 128 * wgi + 16 * w + gq
        for mb in range(2):
            h = rl + 64 * mb
            for i in range(16):
                m = 8 * i + 2 * tq
                for q in range(4):
                    dm, dh = q & 1, 8 * (q >> 1)
                    key = (m + dm, h + dh)
                    # the accumulator acc[mb][4i+q] holds D fragment i' = 4i+q of block mb
                    row, col = d_frag(w, lane, 4 * i + q)
                    assert (128 * wgi + 64 * mb + row, col) == (h + dh, m + dm)
                    assert key not in seen
                    seen.add(key)
    assert len(seen) == 128 * 256


def permute_prefix(n, e_loc, T, K):
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
            pre[3] += (ng + WG_BM - 1) // WG_BM
        elif ng > 0:
            pre[2] += 1
    return G, pre[3]


def map_tile(mode, groups, t, ntn, Is, acts_gated):
    mt, nt = t // ntn, t % ntn
    lo, hi = 0, len(groups) - 1
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if groups[mid]["tile0_wg"] <= mt:
            lo = mid
        else:
            hi = mid - 1
    g = lo
    m0 = (mt - groups[g]["tile0_wg"]) * WG_BT
    n0 = nt * tile_cols(mode)
    if mode == GEMM2:
        return True, g, m0, n0
    return (acts_gated[g] == (mode == GATED)) and n0 < Is[g], g, m0, n0


def check_schedule(rng, trials=300):
    for trial in range(trials):
        e_loc = rng.randint(1, 40)
        shared = rng.random() < 0.5
        T, K = rng.randint(33, 3000), rng.randint(1, 8)
        groups = e_loc + (1 if shared else 0)
        n = []
        for g in range(e_loc):
            n.append(rng.choice([0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, rng.randint(0, 700)]))
        if shared:
            n.append(T)
        G, total = permute_prefix(n, e_loc, T, K)
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
        # GEMM1: every (group, row, 32-column block) of tiled, gating-matching groups exactly
        # once across both kernels. A tile covers rows m0..min(m0 + 128, rows) - 1 of its group
        # (stored only below rows), so it is enough that each group's m0 values are exactly
        # 0, 128, ... below rows, once per column block.
        out1 = {}
        for mode in modes:
            ntn = (I_max + tile_cols(mode) - 1) // tile_cols(mode)
            grid = rng.choice([1, 7, 132])
            for b in range(grid):
                for t in range(b, total * ntn, grid):
                    ok, g, m0, n0 = map_tile(mode, G, t, ntn, Is, acts_gated)
                    if not ok:
                        continue
                    assert G[g]["rows"] > SKINNY_MAX and 0 <= m0 < G[g]["rows"] and m0 % 128 == 0
                    for jb in range(0, tile_cols(mode), 32):  # 32-column blocks, stored if n0+jb < I
                        if n0 + jb < Is[g]:
                            key = (g, m0, n0 + jb)
                            assert key not in out1
                            out1[key] = mode
        exp = {(g, m0, j) for g in range(groups) if n[g] > SKINNY_MAX for m0 in range(0, n[g], 128)
               for j in range(0, Is[g], 32)}
        assert set(out1) == exp, (trial, len(out1), len(exp))
        for (g, m0, j), mode in out1.items():
            assert (mode == GATED) == acts_gated[g]
        # GEMM2: (group, m-tile, 32-wide h block) exactly once
        ntn = (H + WG_BW - 1) // WG_BW
        out2 = set()
        for t in range(total * ntn):
            ok, g, m0, n0 = map_tile(GEMM2, G, t, ntn, Is, acts_gated)
            assert ok and 0 <= m0 < G[g]["rows"] and m0 % 128 == 0
            for h in range(n0, min(n0 + 256, H), 32):
                key = (g, m0, h)
                assert key not in out2
                out2.add(key)
        exp2 = {(g, m0, h) for g in range(groups) if n[g] > SKINNY_MAX for m0 in range(0, n[g], 128)
                for h in range(0, H, 32)}
        assert out2 == exp2
        # counts region: cursor (groups+1) + 3 counts + skinny list (groups) fits 3 x (e_loc + 2)
        assert (groups + 1) + 3 + groups <= 3 * (e_loc + 2)


def check_k_tail():
    for K in range(32, 32 * 20, 32):
        nk = (K + WG_BK - 1) // WG_BK
        KB = K // 32
        for kt in range(nk):
            k0 = kt * WG_BK
            for ac in range(8):  # activation chunk: 8 bf16 at k0 + 8 ac
                valid = k0 + 8 * ac < K
                assert valid == all(k0 + 8 * ac + e < K for e in range(8))
            for wc in range(4):  # code chunk: 16 codes at k0 + 16 wc
                valid = k0 + 16 * wc < K
                assert valid == all(k0 + 16 * wc + e < K for e in range(16))
            # scale bytes: block 2kt read always (< KB), block 2kt+1 only when < KB
            assert 2 * kt < KB


if __name__ == "__main__":
    rng = random.Random(1)
    for mode in (GATED, PLAIN, GEMM2):
        for layout in (GU, UG, IL):
            for I, H, n0 in ((320, 416, 0), (320, 416, 256 if mode == GATED else 256), (96, 160, 0), (1856, 2688, 1792)):
                if mode == GATED and n0 % 128:
                    continue
                check_operands(mode, layout, I, H, n0)
    print("operands: codes/activations placement = fragment/descriptor reads; scale rows = code rows; gate/up pairing: OK")
    check_epilogue(GATED)
    check_epilogue(PLAIN)
    print("GEMM1 epilogue: buffer written once per pass, read once, right (token, j) and gate/up, conflict-free, every (token, j) stored once: OK")
    check_gemm2_stores()
    print("GEMM2 stores: every (token, h) of a tile once, matching the D fragment: OK")
    check_schedule(rng, 1000)
    print("tile schedule (1000 random routings, grids 1/7/132): every output (group, row, column block) exactly once: OK")
    check_k_tail()
    print("K tails: zero-fill predicates exact: OK")
