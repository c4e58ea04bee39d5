"""Roofline model of the backward, v1 (commit 500eb1d) vs v2, at the ResNet18-CIFAR
benchmark shapes: batch 256, bf16, keep-basis, C_b = C_out/4, no bias, all four gradients.
Prints the tables of the "v2 backward" section of bench/NOTES.md. PREDICTIONS, not
measurements (made without a GPU). Same assumptions as the forward section, so the two
can be added:

* H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s HBM, ~7 TB/s L2 (assumed, not published).
* kernel time = max(FLOPs / (e_c peak), HBM bytes / (0.8 HBM), L2 bytes / L2) + 1.5 us per
  launch; aten fills/casts cost their launch only.
* v2: e_c = 0.7 (wgmma, one pipelined K loop, 16-byte cp.async: compile report facts).
* v1: e_c = 0.7 n / (n + 2) for grad_x (9 tap loops of n = cdiv(C_b, 32) iterations, each
  filling and draining a 3-stage pipeline); 0.35 for wgrad (mma.sync, 2-warp config at C_b=16,
  one tap per program); 0.7 for grad_z. grad_x multiplies every tap for every input pixel.
* L2 bytes: every operand tile a program loads (cp.async.cg reads L2), summed over programs.
"""

from __future__ import annotations

PEAK, BW, L2, GAP = 989e12, 3.35e12, 7e12, 1.5e-6
SMS, N, DT = 132, 256, 2
SHAPES = [  # name, C_in, H, C_out, k, stride, padding
    ("64ch@32px", 64, 32, 64, 3, 1, 1),
    ("128ch@16px", 128, 16, 128, 3, 1, 1),
    ("256ch@8px", 256, 8, 256, 3, 1, 1),
    ("512ch@4px", 512, 4, 512, 3, 1, 1),
    ("3x3s2 64->128 @32px", 64, 32, 128, 3, 2, 1),
    ("3x3s2 128->256 @16px", 128, 16, 256, 3, 2, 1),
    ("3x3s2 256->512 @8px", 256, 8, 512, 3, 2, 1),
    ("1x1s2 64->128 @32px", 64, 32, 128, 1, 2, 0),
    ("1x1s2 128->256 @16px", 128, 16, 256, 1, 2, 0),
    ("1x1s2 256->512 @8px", 256, 8, 512, 1, 2, 0),
]


def cdiv(a, b):
    return -(-a // b)


def ktime(flops, hbm, l2, e_c, l2_binding=True):
    return max(flops / (e_c * PEAK), hbm / (0.8 * BW), (l2 / L2) if l2_binding else 0) + GAP


def model(C_in, H, C_out, k, s, p):
    from tritonbasis.op.geometry import conv_output_size

    Ho = conv_output_size(H, k, s, p)
    M, Min = N * Ho * Ho, N * H * H
    C_b = C_out // 4
    C_rest = C_out - C_b
    T = k * k
    LW = C_b * C_in * T
    conv = 2 * M * C_b * C_in * T
    x_b, dz_b, g_b, dx_b = Min * C_in * DT, M * C_b * DT, M * C_out * DT, Min * C_in * DT
    v2 = {}
    # grad_z: G + Z (from out) read, dZ written; d coeff partial RMW per BLOCK_M step (L2),
    # P rows to HBM once; wt copy (tiny)
    bm = 128 if C_b <= 32 else 64
    P = min(cdiv(M, 128), 4 * SMS)
    ws_c = P * C_rest * C_b * 4
    v2["grad_z"] = (
        4 * M * C_rest * C_b,
        g_b + 2 * dz_b + ws_c,
        g_b + 2 * dz_b + cdiv(M, bm) * C_rest * C_b * 8,
    )
    # grad_x: only the phase's taps; dZ re-read per tap and per C_in tile
    bn = 128 if C_in >= 128 else 64
    ci_tiles = cdiv(C_in, bn)
    # basis: each program reads its phase's taps (T / s^2 on average) x C_b x BLOCK_N
    v2["grad_x"] = (
        conv,
        dz_b + dx_b + LW * DT,
        dz_b * T * ci_tiles + dx_b + cdiv(Min, 64) * (T / (s * s)) * C_b * C_in * DT,
    )
    # wgrad: x stationary, (tap, cb) rows in BLOCK_A = 128 tiles, C_in in BLOCK_X = 64
    taps_phase = cdiv(k, s) ** 2 if s > 1 else T
    r_tiles = cdiv(taps_phase * C_b, 128)
    tiles = r_tiles * cdiv(C_in, 64) * s * s
    split = max(1, min(cdiv(2 * SMS, tiles), cdiv(N * cdiv(H, s) ** 2, 256)))
    v2["wgrad"] = (
        conv,
        x_b + dz_b + split * LW * 4,
        x_b * r_tiles + dz_b * T * cdiv(C_in, 64) + split * LW * 4,
    )
    red = (split * LW + ws_c / 4) * 4 + (LW + C_rest * C_b) * DT
    v2["bwd_reduce"] = (0, red, red)
    # v1 (HEAD): grad_z (dZ, d bias atomics) | grad_x (9 tap loops, all taps) | wgrad d basis
    # (one tap per program, fp32 atomics into a zeroed buffer) | wgrad d coeff (1x1) | 3 zero
    # fills + 3 casts
    n_it = cdiv(C_b, 32)
    v1 = {
        "grad_z": (2 * M * C_rest * C_b, g_b + dz_b, g_b + dz_b, 0.7),
        "grad_x": (
            2 * Min * C_b * C_in * T,
            dz_b + dx_b,
            dz_b * T * cdiv(C_in, 64) + dx_b,
            0.7 * n_it / (n_it + 2),
        ),
        "wgrad": (
            conv,
            x_b + dz_b + LW * 8,
            x_b * T * cdiv(C_b, 64) + dz_b * T * cdiv(C_in, 32),
            0.35,
        ),
        "wgrad (d coeff)": (
            2 * M * C_rest * C_b,
            M * (C_rest + C_b) * DT,
            M * (C_rest + C_b) * DT,
            0.35,
        ),
    }
    return dict(M=M, C_b=C_b, v2=v2, v1=v1, split=split, P=P, waste=(Min * T) / (M * T))


def main():
    print(
        "| shape | kernel | GFLOP | HBM MB | L2 MB | floor us | v2 predicted us (L2 7 TB/s / "
        "L2 not binding) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    summ = []
    for sh in SHAPES:
        m = model(*sh[1:])
        for kname, (f, hb, l2) in m["v2"].items():
            floor = max(f / PEAK, hb / BW)
            print(
                f"| {sh[0]} | {kname} | {f / 1e9:.2f} | {hb / 1e6:.1f} | {l2 / 1e6:.0f} | "
                f"{floor * 1e6:.1f} | {ktime(f, hb, l2, 0.7) * 1e6:.1f} / "
                f"{ktime(f, hb, l2, 0.7, False) * 1e6:.1f} |"
            )
        floor = sum(max(f / PEAK, hb / BW) for f, hb, _ in m["v2"].values())
        v2 = [sum(ktime(f, hb, l2, 0.7, b) for f, hb, l2 in m["v2"].values()) for b in (1, 0)]
        v1 = [
            sum(ktime(f, hb, l2, e, b) for f, hb, l2, e in m["v1"].values()) + 6 * GAP
            for b in (1, 0)
        ]
        summ.append((sh[0], m, floor, v1, v2))
    print()
    print(
        "| shape | C_b | M | floor us (sum of kernels) | launches v1 -> v2 | grad_x MMA work v1 "
        "/ needed | wgrad split | grad_z programs | predicted v1 us (L2 7 TB/s / not binding)"
        " | predicted v2 us (same) | v1 / v2 |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, m, floor, v1, v2 in summ:
        print(
            f"| {name} | {m['C_b']} | {m['M']} | {floor * 1e6:.1f} | 10 -> 4 | "
            f"{m['waste']:.0f}x | {m['split']} | {m['P']} | {v1[0] * 1e6:.0f} / "
            f"{v1[1] * 1e6:.0f} | {v2[0] * 1e6:.0f} / {v2[1] * 1e6:.0f} | "
            f"{v1[0] / v2[0]:.1f}x / {v1[1] / v2[1]:.1f}x |"
        )


if __name__ == "__main__":
    main()
