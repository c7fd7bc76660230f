#!/usr/bin/env python3
"""CPU model of src/cuda/gemm_skinny.cu's index math, checked against a plain matrix product.

The model follows the kernel step by step with the same index expressions:
  - sk_issue: which 16-byte piece each thread copies into which swizzled shared-memory slot
    (256 threads; weights: block rows t/8 + 32 i, chunk t % 8; tokens: rows t/16 + 16 i, chunk
    t % 16);
  - sk_compute: warp w takes rows 16 (w % 4).. and the 64-wide half w / 4 of each stage; which
    slot each lane reads back for its two weight rows and its token rows, the
    K permutation inside each 64-wide half (lane c's 16 consecutive codes feed the four k16 MMAs
    as logical columns 2c, 2c+1, 2c+8, 2c+9), and the mma.m16n8k16 fragment layouts of the PTX
    ISA (A: a0a1 row g / a2a3 row g+8 / a4a5 row g, k+8 / a6a7 row g+8, k+8; B: b0b1 k 2c..,
    b2b3 k 2c+8..; C: c0c1 row g, c2c3 row g+8, columns 2c, 2c+1);
  - the reduction of the two halves' accumulators (warp w + 4 into warp w), the epilogue's mapping
    of accumulators to (weight row, token) and, for gated GEMM1, the pairing of gate and up rows.
It also checks that a quarter-warp's 16-byte shared loads hit 8 distinct bank groups (no
conflicts).

The CODES path (MXFP8 W8A8: raw E4M3 codes of both operands, f16 MMAs, block scales applied per
32-block) is modelled the same way (run_block_codes): its copies (A and token code rows swizzled
by chunk ^ 2 (row & 3), one code piece per thread, the tokens' 16-byte scale pieces in warp 0,
cut at K), its scale loads (two bytes per row and stage), the K permutation inside each 32-block
(lane c's 8 codes 8c..8c+7 of a row feed MMA m as k pairs 2c, 2c+1 <- 8c+4m+{0,1} and 2c+8,
2c+9 <- 8c+4m+{2,3}), the per-block scaling of the MMA sums, and that a half-warp's 8-byte
shared loads touch 16 distinct 8-byte bank pairs.
The persistent variant's stream (skinny_persist_kernel: skp_prime, skp_item_body, the item
loop) is modelled by check_persistent_stream: ring slots, cp.async commit groups and
wait_group, the scale-byte queue; every computed stage must find its own bytes complete in the
slot it reads and its own scale bytes at the queue's head, and no issue may overwrite a stage
that is not computed yet (items of random stage counts, with and without xitem, GEMM2's
weights-then-tokens prime), for ring depths SK_STAGES of 5 (below the scale queue's span), 6 and 8.
Fresh random shapes each run; exits non-zero on any mismatch.
"""
import os
import sys

import numpy as np

KC, ROWS, THREADS, ROW_WARPS = 128, 64, 256, 4
A_BYTES, B_ROW = ROWS * KC, KC * 2


def w13_row(layout, I, j, half):  # mxm_cuda_w13_row, gated
    if layout == 2:
        return 2 * j + half
    first = 1 if layout == 1 else 0
    return (0 if half == first else I) + j


def weight_row(kind, chunk, br, I, H, layout):  # sk_weight_row
    if kind == "gated":
        j = chunk * 32 + 8 * (br // 16) + (br % 8)
        return w13_row(layout, I, j, (br % 16) // 8) if j < I else -1
    r = chunk * ROWS + br
    return r if r < (I if kind == "plain" else H) else -1


def mma_16816(frag_of_lane):
    """mma.m16n8k16 from each lane's (a, b) fragments (PTX ISA layouts: A a0a1 row g / a2a3 row
    g+8 / a4a5 row g, k+8 / a6a7 row g+8, k+8; B b0b1 k 2c.., b2b3 k 2c+8..): the 16 x 8 product."""
    Am, Bm = np.zeros((16, 16)), np.zeros((16, 8))
    for lane in range(32):
        g, c = lane // 4, lane % 4
        a, b = frag_of_lane(lane)
        Am[g, 2 * c], Am[g, 2 * c + 1] = a[0], a[1]
        Am[g + 8, 2 * c], Am[g + 8, 2 * c + 1] = a[2], a[3]
        Am[g, 2 * c + 8], Am[g, 2 * c + 9] = a[4], a[5]
        Am[g + 8, 2 * c + 8], Am[g + 8, 2 * c + 9] = a[6], a[7]
        Bm[2 * c, g], Bm[2 * c + 1, g] = b[0], b[1]
        Bm[2 * c + 8, g], Bm[2 * c + 9, g] = b[2], b[3]
    return Am @ Bm


def run_block(kind, W, X, n, chunk, I, H, layout, K):
    """One block: returns acc[row warp][lane][ni][q] after the halves' reduction, for the model,
    W codes as values [rows, K]."""
    NT = (n + 7) // 8
    nst = (K + KC - 1) // KC
    acc = np.zeros((2 * ROW_WARPS, 32, NT, 4))
    for st in range(nst):
        k0 = st * KC
        A = np.full(A_BYTES, np.nan)  # shared slot, one value per byte position
        B = np.full(NT * 8 * B_ROW // 2, np.nan)  # bf16 elements
        for t in range(THREADS):  # sk_issue
            ca, cb = t % 8, t % 16
            for i in range(ROWS * KC // 16 // THREADS):
                row = t // 8 + (THREADS // 8) * i
                wr = weight_row(kind, chunk, row, I, H, layout)
                dst = row * KC + ((ca ^ ((row & 1) * 4)) * 16)
                ok = wr >= 0 and k0 + 16 * ca < K
                A[dst:dst + 16] = W[wr, k0 + 16 * ca:k0 + 16 * ca + 16] if ok else 0
            for i in range((32 * B_ROW // 16 + THREADS - 1) // THREADS):
                row = t // 16 + (THREADS // 16) * i
                if row >= NT * 8:
                    break
                dst = (row * B_ROW + ((cb ^ (row & 1)) * 16)) // 2
                ok = row < n and k0 + 8 * cb < K
                B[dst:dst + 8] = X[row, k0 + 8 * cb:k0 + 8 * cb + 8] if ok else 0
        assert not np.isnan(A).any(), "weight slot not written"
        assert not np.isnan(B).any(), "token slot not written"
        for warp in range(2 * ROW_WARPS):  # sk_compute
            phases = {}
            for lane in range(32):
                g, c = lane // 4, lane % 4
                r0 = 16 * (warp % ROW_WARPS) + g
                for h in [warp // ROW_WARPS]:
                    ach = ((4 * h + c) ^ ((r0 & 1) * 4)) * 16
                    q0 = A[r0 * KC + ach:r0 * KC + ach + 16]
                    q1 = A[(r0 + 8) * KC + ach:(r0 + 8) * KC + ach + 16]
                    phases.setdefault((h, lane // 8), []).append((r0 * KC + ach) // 16 % 8)
                    for ni in range(NT):
                        tr = 8 * ni + g
                        base = tr * B_ROW
                        x0 = B[(base + (((8 * h + 2 * c) ^ (tr & 1)) * 16)) // 2:][:8]
                        x1 = B[(base + (((8 * h + 2 * c + 1) ^ (tr & 1)) * 16)) // 2:][:8]
                        xb = np.concatenate([x0, x1])
                        for s in range(4):  # a0..a7 / b0..b3 as this lane holds them
                            a = {0: q0[4 * s], 1: q0[4 * s + 1], 2: q1[4 * s], 3: q1[4 * s + 1],
                                 4: q0[4 * s + 2], 5: q0[4 * s + 3], 6: q1[4 * s + 2], 7: q1[4 * s + 3]}
                            b = {0: xb[4 * s], 1: xb[4 * s + 1], 2: xb[4 * s + 2], 3: xb[4 * s + 3]}
                            frags[(warp, lane, ni, s, h)] = (a, b)
            for (h, quarter), banks in phases.items():
                assert len(banks) == 8 and len(set(banks)) == 8, f"bank conflict: {banks}"
        # mma.m16n8k16 from the fragments (PTX ISA layouts), per warp / n8 tile / step
        for warp in range(2 * ROW_WARPS):
            for ni in range(NT):
                for h in [warp // ROW_WARPS]:
                    for s in range(4):
                        Cm = mma_16816(lambda lane: frags[(warp, lane, ni, s, h)][:2])
                        for lane in range(32):
                            g, c = lane // 4, lane % 4
                            acc[warp, lane, ni] += [Cm[g, 2 * c], Cm[g, 2 * c + 1], Cm[g + 8, 2 * c], Cm[g + 8, 2 * c + 1]]
    # the second half's warps hand their sums to the first half's (thread t % 128 of the buffer)
    return acc[:ROW_WARPS] + acc[ROW_WARPS:]


frags = {}


def run_block_codes(kind, W, WS, X, XS, n, chunk, I, H, layout, K):
    """The CODES path of one block: W, X integer codes [rows, K], WS, XS their block scales
    (powers of two) [rows, K / 32]; XS rows padded to a multiple of 4 blocks with NaN (the
    kernel never reads past K)."""
    NT = (n + 7) // 8
    nst = (K + KC - 1) // KC
    acc = np.zeros((2 * ROW_WARPS, 32, NT, 4))
    BC, BS_ROW = KC, 4  # code bytes and scale floats per token row of a stage
    for st in range(nst):
        k0 = st * KC
        A = np.full(A_BYTES, np.nan)
        B = np.full(NT * 8 * BC, np.nan)
        BS = np.full(NT * 8 * BS_ROW, np.nan)
        for t in range(THREADS):  # sk_issue<true>
            ca = t % 8
            for i in range(ROWS * KC // 16 // THREADS):
                row = t // 8 + (THREADS // 8) * i
                wr = weight_row(kind, chunk, row, I, H, layout)
                dst = row * KC + ((ca ^ ((row & 3) << 1)) * 16)
                ok = wr >= 0 and k0 < K - 16 * ca
                A[dst:dst + 16] = W[wr, k0 + 16 * ca:k0 + 16 * ca + 16] if ok else 0
            tok = t // 8
            if tok < NT * 8:
                dst = tok * BC + ((ca ^ ((tok & 3) << 1)) * 16)
                ok = tok < n and k0 < K - 16 * ca
                B[dst:dst + 16] = X[tok, k0 + 16 * ca:k0 + 16 * ca + 16] if ok else 0
            stok = t
            if stok < NT * 8:
                lim = K if stok < n else 0
                left = lim - k0
                nbytes = 16 if left >= 128 else (left >> 3 if left > 0 else 0)
                piece = np.zeros(4)
                if nbytes:
                    piece[:nbytes // 4] = XS[stok, k0 // 32:k0 // 32 + nbytes // 4]
                BS[stok * BS_ROW:stok * BS_ROW + 4] = piece
        assert not np.isnan(A).any() and not np.isnan(B).any() and not np.isnan(BS).any(), "slot not written"
        for warp in range(2 * ROW_WARPS):  # sk_load_scales<true> + sk_compute_codes
            h = warp // ROW_WARPS
            phases = {}
            for lane in range(32):
                g, c = lane // 4, lane % 4
                r0 = 16 * (warp % ROW_WARPS) + g
                ws = np.zeros((2, 2))
                for r in range(2):
                    wr = weight_row(kind, chunk, r0 + 8 * r, I, H, layout)
                    lim = K - 64 * h if wr >= 0 else 0
                    for j in range(2):
                        ws[r, j] = WS[wr, k0 // 32 + 2 * h + j] if k0 + 32 * j < lim else 1.0  # byte 127
                for j in range(2):
                    ch, off = 2 * (2 * h + j) + c // 2, (c % 2) * 8
                    sw = ((ch ^ ((g & 3) << 1)) * 16) + off
                    phases.setdefault((j, lane // 16), []).append((r0 * KC + sw) // 8 % 16)
                    qa0 = A[r0 * KC + sw:r0 * KC + sw + 8]
                    qa1 = A[(r0 + 8) * KC + sw:(r0 + 8) * KC + sw + 8]
                    for ni in range(NT):
                        tb = 8 * ni + g
                        qb = B[tb * BC + sw:tb * BC + sw + 8]
                        xs = [BS[(8 * ni + 2 * c + e) * BS_ROW + 2 * h + j] for e in range(2)]
                        for m in range(2):
                            a = {0: qa0[4 * m], 1: qa0[4 * m + 1], 2: qa1[4 * m], 3: qa1[4 * m + 1],
                                 4: qa0[4 * m + 2], 5: qa0[4 * m + 3], 6: qa1[4 * m + 2], 7: qa1[4 * m + 3]}
                            b = {0: qb[4 * m], 1: qb[4 * m + 1], 2: qb[4 * m + 2], 3: qb[4 * m + 3]}
                            frags[(warp, lane, ni, j, m)] = (a, b, ws[:, j].copy(), xs)
            for key, slots in phases.items():
                assert len(slots) == 16 and len(set(slots)) == 16, f"bank conflict: {key} {slots}"
        for warp in range(2 * ROW_WARPS):
            for ni in range(NT):
                for j in range(2):
                    part = np.zeros((16, 8))
                    for m in range(2):
                        part += mma_16816(lambda lane: frags[(warp, lane, ni, j, m)][:2])
                    for lane in range(32):
                        g, c = lane // 4, lane % 4
                        _, _, ws, xs = frags[(warp, lane, ni, j, 0)]
                        p4 = [part[g, 2 * c], part[g, 2 * c + 1], part[g + 8, 2 * c], part[g + 8, 2 * c + 1]]
                        for q in range(4):
                            acc[warp, lane, ni, q] += p4[q] * (ws[q // 2] * xs[q % 2])
    return acc[:ROW_WARPS] + acc[ROW_WARPS:]


def check(rng, kind, layout, codes=False):
    H = 32 * int(rng.integers(2, 9))
    I = 32 * int(rng.integers(1, 5))
    n = int(rng.integers(1, 33))
    K = H if kind != "gemm2" else I
    nrows = (2 * I if kind == "gated" else I) if kind != "gemm2" else H
    W = rng.integers(-8, 9, size=(nrows, K)).astype(float)
    X = rng.integers(-8, 9, size=(n, K)).astype(float)
    if codes:  # block scales 2^-3..2^3; the tokens' rows padded as a.xsf's stride (NaN past K)
        WS = 2.0 ** rng.integers(-3, 4, size=(nrows, K // 32))
        XS = np.full((n, (K // 32 + 3) // 4 * 4), np.nan)
        XS[:, :K // 32] = 2.0 ** rng.integers(-3, 4, size=(n, K // 32))
        full = (W * np.repeat(WS, 32, axis=1)) @ (X * np.repeat(XS[:, :K // 32], 32, axis=1)).T
    else:
        full = W @ X.T  # [weight row, token]
    chunks = (I + 31) // 32 if kind == "gated" else ((I if kind == "plain" else H) + ROWS - 1) // ROWS
    seen = np.zeros_like(full, dtype=int)
    for chunk in range(chunks):
        acc = (run_block_codes(kind, W, WS, X, XS, n, chunk, I, H, layout, K) if codes
               else run_block(kind, W, X, n, chunk, I, H, layout, K))
        for warp in range(4):
            for lane in range(32):
                g, c = lane // 4, lane % 4
                for ni in range((n + 7) // 8):
                    for q in range(4):
                        tok = 8 * ni + 2 * c + (q % 2)
                        br = 16 * warp + g + 8 * (q // 2)  # accumulator row of the block
                        wr = weight_row(kind, chunk, br, I, H, layout)
                        if tok >= n or wr < 0:
                            assert acc[warp, lane, ni, q] == 0, "padding accumulated data"
                            continue
                        assert acc[warp, lane, ni, q] == full[wr, tok], (kind, chunk, warp, lane, ni, q)
                        seen[wr, tok] += 1
                        if kind == "gated" and q < 2:  # gate in c0/c1, its up row in c2/c3
                            j = chunk * 32 + 8 * warp + g
                            assert wr == w13_row(layout, I, j, 0)
                            assert weight_row(kind, chunk, br + 8, I, H, layout) == w13_row(layout, I, j, 1)
    assert (seen == 1).all(), "some (row, token) not computed exactly once"
    return f"{kind:6s} layout={layout} codes={int(codes)} H={H} I={I} n={n}"


SC_AHEAD = 4  # SK_SC_AHEAD
STAGES_BUILDS = (5, 6, 8)  # SK_STAGES: below the queue's span (5), the default, the st8 variant


def xitem_stages(STAGES):
    """SKP_XITEM_STAGES: the fewest stages every item needs for the cross-item stream (the ring's
    look-ahead and the scale queue's)."""
    return max(STAGES - 1, SC_AHEAD + 1)


def check_persistent_stream(rng, gemm2, STAGES):
    """One block's items through skinny_persist_kernel's ring and scale queue (SK_STAGES = STAGES)."""
    xitem = bool(rng.integers(0, 2))
    lo = xitem_stages(STAGES) if xitem else 1
    nsts = [int(rng.integers(lo, lo + 12)) for _ in range(int(rng.integers(1, 7)))]
    slots = [None] * STAGES  # the (item, stage) a slot holds
    parts = {}               # (item, stage) -> parts issued ("w", "x")
    groups, complete, computed = [], set(), set()
    batch = set()

    def issue(slot, item, stage, what):
        held = slots[slot]
        assert held is None or held == (item, stage) or held in computed, ("overwrites", held, item, stage)
        slots[slot] = (item, stage)
        for p in what:
            parts.setdefault((item, stage), set()).add(p)
            batch.add((item, stage, p))

    def commit():
        groups.append(set(batch))
        batch.clear()

    def wait(n):  # cp.async.wait_group n: all but the n most recent groups are complete
        for gr in groups[:len(groups) - n]:
            complete.update(gr)

    st = {"use": 0, "fill": 0, "cur": None, "ahead": [None] * SC_AHEAD}

    def load_sc(item, stage):  # sk_load_scales: past K it loads 127 (a stage of no use)
        return (item, stage) if stage < nsts[item] else None

    def prime(item, what, scales):  # skp_prime
        for s_ in range(STAGES - 1):
            if s_ < nsts[item]:
                issue((st["use"] + s_) % STAGES, item, s_, what)
            commit()
        st["fill"] = (st["use"] + STAGES - 1) % STAGES
        if scales:
            st["cur"] = load_sc(item, 0)
            st["ahead"] = [load_sc(item, i + 1) for i in range(SC_AHEAD)]

    def body(item, nx_on):  # skp_item_body's K loop
        nst, nnst = nsts[item], nsts[item + 1] if item + 1 < len(nsts) else 0
        for it in range(nst):
            wait(STAGES - 2)
            ns = it + STAGES - 1
            if ns < nst:
                issue(st["fill"], item, ns, "wx")
            elif nx_on and ns - nst < nnst:
                issue(st["fill"], item + 1, ns - nst, "wx")
            commit()
            st["fill"] = (st["fill"] + 1) % STAGES
            slot = st["use"]
            st["use"] = (st["use"] + 1) % STAGES
            assert slots[slot] == (item, it), ("slot holds", slots[slot], item, it)
            for p in "wx":
                assert (item, it, p) in complete, ("incomplete", item, it, p)
            assert st["cur"] == (item, it), ("scale queue", st["cur"], item, it)
            computed.add((item, it))
            st["cur"] = st["ahead"][0]
            st["ahead"] = st["ahead"][1:] + [None]
            sa = it + 1 + SC_AHEAD
            st["ahead"][-1] = load_sc(item, sa) if sa < nst or not nx_on else load_sc(item + 1, sa - nst)

    # skinny_persist_kernel: the first item (GEMM2: weights, wait for GEMM1, tokens, wait_group 0)
    prime(0, "w" if gemm2 else "wx", True)
    if gemm2:
        prime(0, "x", False)
        wait(0)
    for item in range(len(nsts)):
        nx_on = xitem and item + 1 < len(nsts)
        body(item, nx_on)
        if item + 1 < len(nsts) and not xitem:
            prime(item + 1, "wx", True)
    wait(0)
    assert len(computed) == sum(nsts)
    return f"stream SK_STAGES={STAGES} gemm2={int(gemm2)} xitem={int(xitem)} stages={nsts}"


def main():
    seed = int(os.environ.get("MXM_TEST_SEED", np.random.SeedSequence().entropy % (1 << 63)))
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    cases = [("gated", 0), ("gated", 1), ("gated", 2), ("plain", 0), ("gemm2", 0)]
    cases = [(k, lay, codes) for codes in (False, True) for k, lay in cases]
    for kind, layout, codes in cases:
        print("PASS", check(rng, kind, layout, codes))
    streams = 400
    for i in range(streams):
        r = check_persistent_stream(rng, bool(i % 2), STAGES_BUILDS[i % len(STAGES_BUILDS)])
        if i < 4:
            print("PASS", r)
    print(f"{len(cases)} layouts and {streams} persistent streams passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
