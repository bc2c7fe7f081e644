"""Float vs int8 on the run's test clips, and the int8 model in three real interpreters.

TFLM's output is the reference the board must reproduce; LiteRT's reference kernels should match it
nearly bit for bit, LiteRT's default (XNNPACK) kernels need not.

Whether int8 loses too much, and so whether quantization-aware training is called for, is decided
on the run's validation clips (a refit run, which has none, on a fixed sample of its training
clips): the test clips are scored and reported, never used to choose.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from convert.compare import agreement, error_metrics
from convert.interpreters import LiteRtRunner, TflmRunner, dequantize, quantize_input, tflm_arena_bytes
from convert.quantize import MODEL_FILE
from convert.tflite_file import TensorSpec, io_specs, op_versions, sha256
from train.corpus import read_wav
from train.frontend import FrontEndConfig, clip_features
from train.labels import label_index
from train.metrics import scores
from train.splits import clips_with_role, decision_clips, load_manifest

ACCURACY_DROP_LIMIT = 0.01  # more than one point lost to int8 is reported loudly (test) and calls for QAT (validation)


def _inputs(clips: list[dict], root: Path, cfg: FrontEndConfig, role: str, show_progress: bool) -> np.ndarray:
    bar = tqdm(clips, desc=f"front end ({role} clips)", unit="clip", disable=not show_progress)
    return np.stack([clip_features(read_wav(root / c["path"]), cfg) for c in bar])


def _labels(clips: list[dict]) -> np.ndarray:
    return np.array([label_index(c["emotion"]) for c in clips])


def validation_drop(
    model: keras.Model,
    tflm: TflmRunner,
    in_spec: TensorSpec,
    manifest: dict,
    root: Path,
    cfg: FrontEndConfig,
    show_progress: bool,
) -> dict:
    """Float vs int8 (TFLM) accuracy on the decision clips (``decision_clips``): the figure that decides on QAT."""
    clips, role = decision_clips(manifest)
    x, y = _inputs(clips, root, cfg, role, show_progress), _labels(clips)
    float_acc = float(np.mean(model.predict(x, verbose=0, batch_size=64).argmax(1) == y))
    int8_acc = float(np.mean(np.stack([tflm(quantize_input(xi, in_spec)) for xi in x]).argmax(1) == y))
    drop = float_acc - int8_acc
    return {"clips": len(clips), "role": role, "float_accuracy": float_acc, "int8_accuracy": int8_acc, "accuracy_drop": drop}


def verify_run(run: Path, root: Path, show_progress: bool = True) -> dict:
    """Float (the run's ``model.keras``) vs its int8 ``model_int8.tflite`` on the run's test and validation clips."""
    tflite = (run / MODEL_FILE).read_bytes()
    in_spec, out_spec = io_specs(tflite)
    cfg = FrontEndConfig.load(run / "frontend.json")
    manifest = load_manifest(run / "manifest.json")
    test = clips_with_role(manifest, "test")
    y = _labels(test)
    x = _inputs(test, root, cfg, "test", show_progress)

    model = keras.models.load_model(run / "model.keras")
    float_probs = model.predict(x, verbose=0, batch_size=64)
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
    val = validation_drop(model, runners[0], in_spec, manifest, root, cfg, show_progress)
    report["validation"] = val
    report["qat_advised"] = val["accuracy_drop"] > ACCURACY_DROP_LIMIT
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
        validation_line(r),
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
    if "ptq" in r:
        lines += ["", *qat_lines(r)]
    if r["accuracy_drop_too_large"]:
        lines += ["", f"**{drop_warning(r, run)}**"]
    return "\n".join(lines) + "\n"


def validation_line(r: dict) -> str:
    """What decides on quantization-aware training: the drop on the validation clips."""
    v = r["validation"]
    verdict = "QAT advised" if r["qat_advised"] else "no QAT needed"
    which = "validation clips" if v["role"] == "validation" else "training clips (a refit run has no validation part)"
    return (
        f"On {v['clips']} {which}, which decide on quantization-aware training: float "
        f"{v['float_accuracy']:.2%}, int8 {v['int8_accuracy']:.2%} ({-v['accuracy_drop']:+.2%}; limit "
        f"{-ACCURACY_DROP_LIMIT:+.0%}): {verdict}."
    )


def drop_warning(r: dict, run: Path) -> str:
    """The loud message for an int8 model that loses more than the limit, naming the remedy."""
    lost = (
        f"WARNING: int8 loses {100 * r['accuracy_drop']:.2f} points of accuracy against float "
        f"({r['float']['accuracy']:.2%} -> {r['int8']['accuracy']:.2%}; limit {100 * ACCURACY_DROP_LIMIT:g} point)"
    )
    if "ptq" in r:
        ptq = 100 * r["ptq"]["accuracy_drop"]
        return f"{lost} even after quantization-aware training (post-training quantization lost {ptq:.2f} points)."
    val = f"on the {r['validation']['role']} clips that decide on QAT it loses {100 * r['validation']['accuracy_drop']:.2f}"
    return f"{lost}; {val}. Quantization-aware training may recover it: ser-convert {run} --qat"


def qat_lines(r: dict) -> list[str]:
    """PTQ vs QAT: the accuracy table and how the fine-tune went (chosen on validation clips only)."""
    q, p = r["qat"], r["ptq"]

    def row(name: str, s: dict, drop: float | None) -> str:
        change = "" if drop is None else f"{-drop:+.2%}"
        return f"| {name} | {s['accuracy']:.2%} | {change} | {s['unweighted_accuracy']:.2%} | {s['macro_f1']:.2%} |"

    k = q["best_epoch"]
    return [
        "## Post-training quantization (PTQ) vs quantization-aware training (QAT)",
        "",
        f"| on {r['test_clips']} test clips | accuracy | vs float | unweighted accuracy | macro-F1 |",
        "| --- | --- | --- | --- | --- |",
        row("float (Keras)", r["float"], None),
        row("int8 PTQ (TFLM, `model_int8_ptq.tflite`)", p["int8"], p["accuracy_drop"]),
        row("int8 QAT (TFLM, `model_int8.tflite`)", r["int8"], r["accuracy_drop"]),
        "",
        f"QAT: {q['epochs']} epochs of fine-tuning with fake int8 weights and activations (at the converter's "
        f"scales) on {q['train_clips']} training clips, peak learning rate {q['learning_rate']:g}. Epoch kept: "
        f"{k} (0 = not fine-tuned), the lowest loss of the fake-quantized model on {q['val_clips']} "
        f"{q.get('val_role', 'validation')} clips ({q['val_loss'][0]:.4f} before, {q['val_loss'][k]:.4f} kept; "
        f"accuracy {q['val_accuracy'][0]:.2%} before, {q['val_accuracy'][k]:.2%} kept). "
        "Test clips played no part in it.",
    ]
