"""How close two sets of model outputs are: int8 bit-exactness and the errors ST's validate-on-target reports.

Used wherever one runtime is held against another: LiteRT vs TFLM at conversion, a board vs the host.
"""

from __future__ import annotations

import numpy as np


def error_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """ST validate-on-target style errors between two score arrays (flattened)."""
    ref, cand = np.asarray(reference, np.float64).ravel(), np.asarray(candidate, np.float64).ravel()
    diff = cand - ref
    norm = np.linalg.norm(ref) * np.linalg.norm(cand)
    return {
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "mae": float(np.mean(np.abs(diff))),
        "l2_relative": float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-12)),
        "cosine": float(ref @ cand / norm) if norm else 0.0,
    }


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Bit-exactness of int8 outputs: identical clips, max LSB difference, same predicted class."""
    ref, cand = np.asarray(reference, np.int32), np.asarray(candidate, np.int32)
    return {
        "bit_exact_clips": int(np.all(ref == cand, axis=1).sum()),
        "clips": len(ref),
        "max_lsb_diff": int(np.abs(ref - cand).max()) if len(ref) else 0,
        "same_prediction": int((ref.argmax(1) == cand.argmax(1)).sum()),
    }
