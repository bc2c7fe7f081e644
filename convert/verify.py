"""Float vs int8 on the run's test clips, and the int8 model in three real interpreters.

TFLM's output is the reference the board must reproduce; LiteRT's reference kernels should match it
nearly bit for bit, LiteRT's default (XNNPACK) kernels need not.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from convert.interpreters import LiteRtRunner, TflmRunner, dequantize, quantize_input, tflm_arena_bytes
from convert.quantize import MODEL_FILE
from convert.tflite_file import io_specs, op_versions, sha256
from train.corpus import read_wav
from train.frontend import FrontEndConfig, clip_features
from train.labels import label_index
from train.metrics import scores
from train.splits import clips_with_role, load_manifest

ACCURACY_DROP_LIMIT = 0.01  # more than one point lost to int8 is reported loudly


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


def verify_run(run: Path, root: Path, show_progress: bool = True) -> dict:
    tflite = (run / MODEL_FILE).read_bytes()
    in_spec, out_spec = io_specs(tflite)
    cfg = FrontEndConfig.load(run / "frontend.json")
    test = clips_with_role(load_manifest(run / "manifest.json"), "test")
    y = np.array([label_index(c["emotion"]) for c in test])
    bar = tqdm(test, desc="front end (test clips)", unit="clip", disable=not show_progress)
    x = np.stack([clip_features(read_wav(root / c["path"]), cfg) for c in bar])

    float_probs = keras.models.load_model(run / "model.keras").predict(x, verbose=0, batch_size=64)
    q_inputs = [quantize_input(xi, in_spec) for xi in x]
    runners = [TflmRunner(tflite), LiteRtRunner(tflite, reference_kernels=True), LiteRtRunner(tflite, reference_kernels=False)]
    outputs = {}
    for runner in runners:
        bar = tqdm(q_inputs, desc=f"int8 in {runner.name}", unit="clip", disable=not show_progress)
        outputs[runner.name] = np.stack([runner(q) for q in bar])
    tflm = outputs["tflm"]
    int8_probs = dequantize(tflm, out_spec)
    report = {
        "model_sha256": sha256(tflite),
        "model_bytes": len(tflite),
        "ops": [f"{name} v{version}" for name, version in op_versions(tflite)],
        "input": in_spec.to_dict(),
        "output": out_spec.to_dict(),
        "tflm_arena_bytes": tflm_arena_bytes(tflite),
        "test_clips": len(test),
        "float": scores(y, float_probs.argmax(1)),
        "int8": scores(y, tflm.argmax(1)),
        "prediction_agreement_float_int8": float((float_probs.argmax(1) == tflm.argmax(1)).mean()),
        "int8_vs_float_scores": error_metrics(float_probs, int8_probs),
        "tflm_vs": {name: agreement(tflm, out) for name, out in outputs.items() if name != "tflm"},
    }
    report["accuracy_drop"] = report["float"]["accuracy"] - report["int8"]["accuracy"]
    report["accuracy_drop_too_large"] = report["accuracy_drop"] > ACCURACY_DROP_LIMIT
    return report


def report_md(r: dict, run: Path) -> str:
    e = r["int8_vs_float_scores"]
    i = r["input"]

    def row(name: str, s: dict) -> str:
        return f"| {name} | {s['accuracy']:.2%} | {s['unweighted_accuracy']:.2%} | {s['macro_f1']:.2%} |"

    lines = [
        f"# int8 conversion of {run.name}",
        "",
        f"Model `{r['model_sha256'][:16]}...`, {r['model_bytes']:,} bytes, TFLM arena {r['tflm_arena_bytes']:,} bytes; "
        f"input {i['shape']} {i['dtype']} (scale {i['scale']:.6g}, zero point {i['zero_point']}).",
        "",
        f"Ops: {', '.join(r['ops'])}",
        "",
        f"| on {r['test_clips']} test clips | accuracy | unweighted accuracy | macro-F1 |",
        "| --- | --- | --- | --- |",
        row("float (Keras)", r["float"]),
        row("int8 (TFLM)", r["int8"]),
        "",
        f"Predictions agree on {r['prediction_agreement_float_int8']:.2%} of clips. Dequantized int8 scores vs float: "
        f"RMSE {e['rmse']:.4f}, MAE {e['mae']:.4f}, L2 relative {e['l2_relative']:.4f}, cosine {e['cosine']:.4f}.",
        "",
        "| TFLM vs | bit-exact clips | max LSB difference | same prediction |",
        "| --- | --- | --- | --- |",
    ]
    for name, a in r["tflm_vs"].items():
        lines.append(
            f"| {name} | {a['bit_exact_clips']}/{a['clips']} | {a['max_lsb_diff']} | {a['same_prediction']}/{a['clips']} |"
        )
    if r["accuracy_drop_too_large"]:
        lines += ["", f"**WARNING: int8 loses {r['accuracy_drop']:.2%} of accuracy (limit {ACCURACY_DROP_LIMIT:.0%}).**"]
    return "\n".join(lines) + "\n"
