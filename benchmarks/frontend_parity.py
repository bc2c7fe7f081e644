"""Benchmark: the board's C front end against the NumPy reference, over a whole corpus.

    python benchmarks/frontend_parity.py --data CASIA [--kinds logmel waveform] [--limit N]

For each kind, the front end is standardised on the corpus (log-mel) and given a realistic int8
input quantization: scale = (max - min) / 255 of the reference features over the corpus, with the
zero point that maps min to -128. Every clip's int8 model input made by the C code (what the board
writes) is compared with the int8 quantization of the NumPy reference features (``log_mel_frames``).
Prints the share of clips that are bit-identical, the largest difference in LSB, how many values
differ, the largest and the RMS float difference, and the time per clip of the C and NumPy paths.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from train.corpus import discover, load_corpus, resolve_root
from train.frontend import (
    DEFAULT_LOGMEL,
    DEFAULT_WAVEFORM,
    FrontEndConfig,
    clip_log_mel,
    features,
    fit_clip,
    model_input_int8,
    quantize_input,
    reference_features,
)


def input_quantization(values: list[np.ndarray]) -> tuple[float, int]:
    """Scale and zero point spreading the corpus' feature range over the 256 int8 steps."""
    lo = float(min(v.min() for v in values))
    hi = float(max(v.max() for v in values))
    scale = float(np.float32((hi - lo) / 255))
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def parity(cfg: FrontEndConfig, pcms: list[np.ndarray]) -> dict[str, float]:
    """Compare C and NumPy on every clip; returns the figures printed in the table."""
    boards = [fit_clip(p, cfg) for p in pcms]
    model_input_int8(boards[0], cfg, 1.0, 0)  # build the library and its tables outside the timing
    reference_features(boards[0], cfg)
    refs, t_ref = [], 0.0
    for board in boards:
        t0 = time.perf_counter()
        refs.append(reference_features(board, cfg))
        t_ref += time.perf_counter() - t0
    scale, zero_point = input_quantization(refs)
    same, max_lsb, differing, max_float, t_c_int8, t_c_float = 0, 0, 0, 0.0, 0.0, 0.0
    sq_float = 0.0
    for board, ref in zip(boards, refs, strict=True):
        t0 = time.perf_counter()
        q_c = model_input_int8(board, cfg, scale, zero_point)
        t1 = time.perf_counter()
        f_c = features(board, cfg)
        t_c_float += time.perf_counter() - t1
        t_c_int8 += t1 - t0
        diff = np.abs(q_c.astype(np.int16) - quantize_input(ref, scale, zero_point).astype(np.int16))
        same += int(not diff.any())
        max_lsb = max(max_lsb, int(diff.max()))
        differing += int(np.count_nonzero(diff))
        max_float = max(max_float, float(np.abs(f_c - ref).max()))
        sq_float += float(np.sum((f_c.astype(np.float64) - ref.astype(np.float64)) ** 2))
    n = len(boards)
    return {
        "clips": n,
        "scale": scale,
        "zero_point": zero_point,
        "identical": same / n,
        "max_lsb": max_lsb,
        "differing_values": differing,
        "values": n * int(np.prod(cfg.input_shape)),
        "max_float": max_float,
        "rms_float": float(np.sqrt(sq_float / (n * int(np.prod(cfg.input_shape))))),
        "ms_c_int8": 1e3 * t_c_int8 / n,
        "ms_c_float": 1e3 * t_c_float / n,
        "ms_numpy": 1e3 * t_ref / n,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--kinds", nargs="+", default=["logmel", "waveform"], choices=["logmel", "waveform"])
    p.add_argument("--limit", type=int, help="only the first N clips (quick runs)")
    args = p.parse_args()

    root = resolve_root(args.data)
    clips = discover(root)[: args.limit]
    pcms = load_corpus(root, clips)
    rows = [
        "| front end | clips | int8 scale / zero point | bit-identical clips | max LSB diff | differing values "
        "| max float diff | RMS float diff | C int8 ms/clip | C float ms/clip | NumPy float ms/clip |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in args.kinds:
        cfg = DEFAULT_LOGMEL if kind == "logmel" else DEFAULT_WAVEFORM
        if kind == "logmel":
            values = np.concatenate([clip_log_mel(pcm, cfg).ravel() for pcm in pcms])
            cfg = cfg.with_standardisation(float(values.mean()), float(values.std()))
        r = parity(cfg, pcms)
        rows.append(
            f"| {kind} | {r['clips']} | {r['scale']:.6g} / {r['zero_point']} | {r['identical']:.2%} | {r['max_lsb']} "
            f"| {r['differing_values']} of {r['values']} | {r['max_float']:.3g} | {r['rms_float']:.3g} | {r['ms_c_int8']:.3f} "
            f"| {r['ms_c_float']:.3f} | {r['ms_numpy']:.3f} |"
        )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
