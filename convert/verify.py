"""Float vs int8 on the run's test clips, and the int8 model in three real interpreters.

TFLM's output is the reference the board must reproduce; LiteRT's reference kernels should match it
nearly bit for bit, LiteRT's default (XNNPACK) kernels need not.

Whether int8 loses too much, and so whether quantization-aware training is called for, is decided
on the run's validation clips (a refit run, which has none, on a fixed sample of its training
clips): the test clips are scored and reported, never used to choose.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from convert.compare import agreement, error_metrics
from convert.interpreters import LiteRtRunner, TflmRunner, dequantize, quantize_input, tflm_arena_bytes
from convert.tflite_file import MODEL_FILE, TensorSpec, io_specs, model_head, op_versions, read_metadata, sha256
from train.corpus import read_wav
from train.embedding_c import SCORE_SCALE, board_scores
from train.embedding_norm import EMBEDDING_NORM_FILE, Head, causal, embedding_model, load_head
from train.frontend import FrontEndConfig
from train.labels import label_index
from train.metrics import scores
from train.speaker_norm import run_model_inputs
from train.splits import clips_with_role, decision_clips, load_manifest

if TYPE_CHECKING:
    import keras

ACCURACY_DROP_LIMIT = 0.01  # more than one point lost to int8 is reported loudly (test) and calls for QAT (validation)


def _inputs(run: Path, clips: list[dict], root: Path, cfg: FrontEndConfig, role: str, show_progress: bool) -> np.ndarray:
    """The clips' model inputs; in a speaker-normalised run an unseen voice's are causal, as on the board."""
    bar = tqdm(clips, desc=f"front end ({role} clips)", unit="clip", disable=not show_progress)
    pcms = [read_wav(root / c["path"]) for c in bar]
    return np.stack(run_model_inputs(run, cfg, pcms, [c["speaker"] for c in clips]))


def _labels(clips: list[dict]) -> np.ndarray:
    return np.array([label_index(c["emotion"]) for c in clips])


class Scoring:
    """Scores and predictions of the float model and of the int8 model's output, for the same clips.

    For a model that ends at its embedding (``embedding_norm.json``) both go through the per-speaker
    classifier, each voice causally in board order: float by the run's float head, int8 by the board's
    own C stage (``train.embedding_c``). Otherwise they are the models' outputs.
    """

    def __init__(self, run: Path, model: keras.Model, tflite: bytes) -> None:
        self.head_q = model_head(tflite)
        self.head: Head | None = load_head(run / EMBEDDING_NORM_FILE) if self.head_q is not None else None
        self.model = embedding_model(model) if self.head_q is not None else model

    def float_scores(self, x: np.ndarray, speakers: list[str]) -> np.ndarray:
        out = self.model.predict(x, verbose=0, batch_size=64)
        if self.head is None:
            return out
        return self.head.logits(causal(out, speakers, (self.head.prior_mean, self.head.prior_std), self.head.prior_clips))

    def int8_scores(self, outputs: np.ndarray, speakers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """int8 scores and predicted classes."""
        if self.head_q is None:
            return outputs, outputs.argmax(1)
        return board_scores(outputs, speakers, self.head_q)


def validation_drop(
    run: Path,
    scoring: Scoring,
    tflm: TflmRunner,
    in_spec: TensorSpec,
    manifest: dict,
    root: Path,
    cfg: FrontEndConfig,
    show_progress: bool,
) -> dict:
    """Float vs int8 (TFLM) accuracy on the decision clips (``decision_clips``): the figure that decides on QAT."""
    clips, role = decision_clips(manifest)
    x, y = _inputs(run, clips, root, cfg, role, show_progress), _labels(clips)
    speakers = [c["speaker"] for c in clips]
    float_acc = float(np.mean(scoring.float_scores(x, speakers).argmax(1) == y))
    int8_out = np.stack([tflm(quantize_input(xi, in_spec)) for xi in x])
    int8_acc = float(np.mean(scoring.int8_scores(int8_out, speakers)[1] == y))
    drop = float_acc - int8_acc
    return {"clips": len(clips), "role": role, "float_accuracy": float_acc, "int8_accuracy": int8_acc, "accuracy_drop": drop}


def verify_run(run: Path, root: Path, show_progress: bool = True) -> dict:
    """Float (the run's ``model.keras``) vs its int8 ``model_int8.tflite`` on the run's test and validation clips."""
    import keras  # here, not at the top: the report's text needs no TensorFlow

    tflite = (run / MODEL_FILE).read_bytes()
    in_spec, out_spec = io_specs(tflite)
    cfg = FrontEndConfig.load(run / "frontend.json")
    manifest = load_manifest(run / "manifest.json")
    test = clips_with_role(manifest, "test")
    y = _labels(test)
    x = _inputs(run, test, root, cfg, "test", show_progress)

    model = keras.models.load_model(run / "model.keras")
    scoring = Scoring(run, model, tflite)
    speakers = [c["speaker"] for c in test]
    float_probs = scoring.float_scores(x, speakers)
    q_inputs = [quantize_input(xi, in_spec) for xi in x]
    runners = [TflmRunner(tflite), LiteRtRunner(tflite, reference_kernels=True), LiteRtRunner(tflite, reference_kernels=False)]
    outputs = {}
    for runner in runners:
        bar = tqdm(q_inputs, desc=f"int8 in {runner.name}", unit="clip", disable=not show_progress)
        outputs[runner.name] = np.stack([runner(q) for q in bar])
    int8_scores, int8_predicted = scoring.int8_scores(outputs["tflm"], speakers)
    if scoring.head_q is None:
        int8_probs = dequantize(int8_scores, out_spec)
    else:  # the classifier's logits, in steps of 1/SER_EN_SCORE_SCALE
        int8_probs = int8_scores.astype(np.float32) / SCORE_SCALE
    report = {
        "model_sha256": sha256(tflite),
        "model_bytes": len(tflite),
        "ops": [f"{name} v{version}" for name, version in op_versions(tflite)],
        "input": in_spec.to_dict(),
        "output": out_spec.to_dict(),
        "tflm_arena_bytes": tflm_arena_bytes(tflite),
        "test_clips": len(test),
        "float": scores(y, float_probs.argmax(1)),
        "int8": scores(y, int8_predicted),
        "prediction_agreement_float_int8": float((float_probs.argmax(1) == int8_predicted).mean()),
        "int8_vs_float_scores": error_metrics(float_probs, int8_probs),
        "tflm_vs": {name: agreement(outputs["tflm"], out) for name, out in outputs.items() if name != "tflm"},
        "embedding_norm": scoring.head_q is not None,
        "embedding_classifier_fitted_on": (read_metadata(tflite) or {}).get("embedding_classifier_fitted_on"),
    }
    report["accuracy_drop"] = report["float"]["accuracy"] - report["int8"]["accuracy"]
    report["accuracy_drop_too_large"] = report["accuracy_drop"] > ACCURACY_DROP_LIMIT
    val = validation_drop(run, scoring, runners[0], in_spec, manifest, root, cfg, show_progress)
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
    ]
    fitted_on = r.get("embedding_classifier_fitted_on")
    if fitted_on:
        lines += [f"The per-speaker embedding classifier of the int8 model was fitted on the {fitted_on} embeddings.", ""]
    lines += [
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


def _points(change: float) -> str:
    return f"{100 * change + 0.0:+.2f} points"  # + 0.0: no "-0.00"


def validation_line(r: dict) -> str:
    """What decides on quantization-aware training: the drop of post-training quantization on the validation clips.

    After QAT the verdict stays the one that was taken on the PTQ model (a QAT model is not judged to
    need QAT again); what QAT gave on the same clips follows it.
    """
    ptq = r.get("ptq", r)
    v = ptq["validation"]
    verdict = "QAT advised" if ptq["qat_advised"] else "no QAT needed"
    which = "validation clips" if v["role"] == "validation" else "training clips (a refit run has no validation part)"
    line = (
        f"On {v['clips']} {which}, which decide on quantization-aware training: float "
        f"{v['float_accuracy']:.2%}, int8 after post-training quantization {v['int8_accuracy']:.2%} "
        f"({_points(-v['accuracy_drop'])}; limit {_points(-ACCURACY_DROP_LIMIT)}): {verdict}."
    )
    if "ptq" in r:
        q = r["validation"]
        line += f" After quantization-aware training: int8 {q['int8_accuracy']:.2%} ({_points(-q['accuracy_drop'])})."
    return line


def summary(r: dict) -> str:
    """The conversion in one line: int8 against float on the test clips, and QAT as the validation clips decided it."""
    ptq = r.get("ptq", r)
    v = ptq["validation"]
    line = (
        f"int8 {r['int8']['accuracy']:.2%} vs float {r['float']['accuracy']:.2%} on {r['test_clips']} test clips "
        f"({_points(-r['accuracy_drop'])})"
    )
    decided = f"post-training quantization {_points(-v['accuracy_drop'])} on {v['clips']} {v['role']} clips"
    if "ptq" not in r:
        return f"{line}; {'QAT advised' if r['qat_advised'] else 'no QAT needed'} ({decided})"
    qat = "QAT kept no fine-tuned epoch" if r["qat"]["best_epoch"] == 0 else f"QAT {_points(-r['validation']['accuracy_drop'])}"
    return f"{line} with {'QAT' if ptq['qat_advised'] else 'QAT on request'} ({decided}, {qat})"


def drop_warning(r: dict, run: Path) -> str:
    """The message for an int8 model that loses more than the limit on the test clips, true to what QAT did."""
    lost = (
        f"WARNING: int8 loses {100 * r['accuracy_drop']:.2f} points of accuracy against float on the test clips "
        f"({r['float']['accuracy']:.2%} -> {r['int8']['accuracy']:.2%}; limit {100 * ACCURACY_DROP_LIMIT:g} point)"
    )
    if "ptq" in r:
        if r["qat"]["best_epoch"] == 0:
            return f"{lost}; quantization-aware training kept no fine-tuned epoch (none lowered its validation loss)."
        ptq = r["ptq"]
        after = "even after" if ptq["accuracy_drop_too_large"] else "after"
        return f"{lost} {after} quantization-aware training (post-training quantization lost {100 * ptq['accuracy_drop']:.2f})."
    v = r["validation"]
    val = f"on the {v['clips']} {v['role']} clips that decide on QAT it loses {100 * v['accuracy_drop']:.2f}"
    if r["qat_advised"]:
        return f"{lost}; {val}. Quantization-aware training may recover it: ser-convert {run} --qat"
    return f"{lost}; {val}, within the limit, so QAT is not advised (the test clips decide nothing)."


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
