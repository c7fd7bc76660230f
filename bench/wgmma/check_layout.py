# Run: python3 bench/wgmma/check_layout.py (no GPU needed). Checks the index math of wgmma_gemm.cu.
# CPU model of the prototype's shared-memory layouts (index math only; hardware semantics assumed
# from the PTX ISA: 128B swizzle = address bits [4:6] ^= bits [7:9]; wgmma A-register fragment =
# mma.m16n8k16 A layout per warp, warp w of the warpgroup holding rows 16w..16w+15).
SLOT_ACT = 16384
# --- weight codes: producer placement (cp.async 16 B chunks) ---
place = {}  # smem byte offset (within slot) -> (row, k)
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
# --- consumer reads: fragment (wg, warp, lane, mb, ks, reg) must be rows/k of the wgmma A layout ---
bank_ok = True
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
            # reg0 = x00 (row g, k 2t), reg1 = x10 (row g+8), reg2 = x01 (row g, k 8+2t), reg3 = x11
            for reg, off in ((0, p), (1, p + 512), (2, p + 8), (3, p + 520)):
                row_in_frag = g + (8 if reg in (1, 3) else 0)
                col = 2 * t + (8 if reg in (2, 3) else 0)
                exp_row = 128 * wgi + 64 * mb + 16 * w + row_in_frag
                exp_k = 16 * ks + col
                for h in range(2):
                    assert place[off + h] == (exp_row, exp_k + h), (ct, ks, mb, reg, h, place[off + h], exp_row, exp_k + h)
# bank conflicts of one LDS.U16 (fixed ks, mb, reg) across a warp
for w in range(4):
    for ks in range(4):
        for mb in range(2):
            for dreg in (0, 512, 8, 520):
                words = {}
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    rl = 16 * w + g
                    off = SLOT_ACT + rl * 64 + 2 * t + mb * 4096 + ((ks ^ ((g >> 1) & 3)) << 4) + dreg
                    words.setdefault((off // 4) % 32, set()).add(off // 4)
                if max(len(v) for v in words.values()) > 1:
                    bank_ok = False
print("weight codes: consumer fragments read the right (row, k) bytes: OK; LDS.U16 conflict-free:", bank_ok)
# --- activations: producer placement vs. what a K-major 128B-swizzle descriptor reads ---
act = {}
for tid in range(128):
    ac, ar = tid & 7, tid >> 3
    a_sw = (ac ^ (ar & 7)) << 4
    for i in range(8):
        r = ar + 16 * i
        for e in range(8):
            off = r * 128 + a_sw + 2 * e
            act[off] = (r, 8 * ac + e)
def sw128(addr):
    return addr ^ (((addr >> 7) & 7) << 4)
for ks in range(4):
    start = ks * 32  # desc start address advanced by 32 bytes per k16 (tile base 1024-aligned)
    for n in range(128):
        for kk in range(16):
            lin = start + (n // 8) * 1024 + (n % 8) * 128 + 2 * kk
            assert act[sw128(lin)] == (n, 16 * ks + kk)
print("activations: 128B-swizzle descriptor reads (n, 16ks+kk) for every ks, n, kk: OK")
# cp.async store wavefronts: 8 lanes per row cover 128 contiguous bytes (full line per 8 lanes)
print("register pool: 56*128 + 224*256 =", 56 * 128 + 224 * 256, "== 168*384 =", 168 * 384)
