"""Quantization-aware training: the fake-quantized Keras model is the int8 model, and ``ser-convert --qat``
writes the QAT model beside the PTQ one with a report comparing them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from convert.cli import convert_main
from convert.interpreters import TflmRunner, dequantize, quantize_input
from convert.qat import QAT_MODEL_FILE, calibrate, rebuild, strip
from convert.quantize import MODEL_FILE, PTQ_MODEL_FILE, calibration_inputs, quantize_int8
from convert.tflite_file import io_specs, read_metadata, sha256
from convert.verify import drop_warning, report_md, validation_line
from train.corpus import discover, load_corpus
from train.fit import TrainConfig
from train.frontend import DEFAULT_WAVEFORM
from train.run import train_one

FRONTEND = replace(DEFAULT_WAVEFORM, clip_samples=8000)  # half a second keeps the test short


@pytest.fixture(scope="module")
def run(synthetic_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AudioResNet run trained for two epochs on the synthetic corpus."""
    out = tmp_path_factory.mktemp("qat") / "run"
    clips = discover(synthetic_corpus)
    tcfg = TrainConfig(model="audio_resnet", epochs=2, batch_size=16, warmup_epochs=1)
    pcm = load_corpus(synthetic_corpus, clips)
    train_one(out, clips, pcm, "paper", 0, tcfg, FRONTEND, mcu_probe=False, show_progress=False)
    return out


def test_folded_model_computes_the_same_function(run: Path, synthetic_corpus: Path) -> None:
    original = keras.models.load_model(run / "model.keras")
    x = np.stack(calibration_inputs(run, synthetic_corpus, count=16))
    plain = rebuild(original, quantize=False)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-5)


def test_fake_quantized_model_reproduces_the_int8_model(run: Path, synthetic_corpus: Path) -> None:
    """At the converter's scales the Keras QAT model computes TFLM's int8 logits, far closer than the float model."""
    original = keras.models.load_model(run / "model.keras")
    samples = calibration_inputs(run, synthetic_corpus)
    qat = rebuild(original, quantize=True)
    ranges = calibrate(qat, original, samples)
    assert set(ranges) == {"input", "conv1_relu", "conv2_relu", "conv3_relu", "conv4_conv", "res_relu", "gap", "classifier"}
    # Compare logits (the classifier's int8 output, before softmax): softmax's own 1/256 grid would hide the rest.
    plain = strip(qat, original)
    plain_logits = keras.Model(plain.inputs, plain.get_layer("classifier").output)
    fake_logits = keras.Model(qat.inputs, qat.get_layer("classifier_fq").output)
    tflite = quantize_int8(plain_logits, samples)
    in_spec, out_spec = io_specs(tflite)
    assert (in_spec.scale, in_spec.zero_point) == ranges["input"]
    assert (out_spec.scale, out_spec.zero_point) == ranges["classifier"]
    x = np.stack(samples)
    tflm = TflmRunner(tflite)
    int8 = np.stack([dequantize(tflm(quantize_input(xi, in_spec)), out_spec) for xi in x])
    fake_err = np.abs(fake_logits.predict(x, verbose=0) - int8) / out_spec.scale
    float_err = np.abs(plain_logits.predict(x, verbose=0) - int8) / out_spec.scale
    assert fake_err.max() <= 1.001 and fake_err.mean() < 0.7 * float_err.mean(), (fake_err.mean(), float_err.mean())


def test_unsupported_layers_are_refused_by_name() -> None:
    inputs = keras.Input((1, 16, 1))
    x = keras.layers.Conv2D(4, (1, 3), activation="tanh", name="odd_conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="odd_conv"):
        rebuild(model, quantize=True)


def test_convert_with_qat_keeps_ptq_and_reports_both(run: Path, synthetic_corpus: Path) -> None:
    assert convert_main([str(run), "--data", str(synthetic_corpus), "--qat", "--qat-epochs", "1", "--quiet"]) == 0
    deployed, ptq = (run / MODEL_FILE).read_bytes(), (run / PTQ_MODEL_FILE).read_bytes()
    meta, ptq_meta = read_metadata(deployed), read_metadata(ptq)
    assert meta["quantization"] == "qat" and ptq_meta["quantization"] == "ptq"
    assert meta["keras_model_sha256"] == sha256((run / QAT_MODEL_FILE).read_bytes())
    assert ptq_meta["keras_model_sha256"] == sha256((run / "model.keras").read_bytes())
    assert meta["frontend"] == ptq_meta["frontend"] and io_specs(deployed)[0].dtype == "int8"

    report = json.loads((run / "conversion.json").read_text())
    assert report["model_sha256"] == sha256(deployed) and report["ptq"]["model_sha256"] == sha256(ptq)
    qat = report["qat"]
    assert qat["epochs"] == 1 and qat["best_epoch"] in (0, 1) and len(qat["val_accuracy"]) == 2
    assert qat["train_clips"] > qat["val_clips"] > 0
    assert report["tflm_vs"]["litert_reference"]["max_lsb_diff"] <= 1
    md = (run / "conversion.md").read_text()
    assert "int8 PTQ" in md and "int8 QAT" in md

    # the verdict on QAT is the one taken on the PTQ model, and what QAT gave on the same clips follows it
    assert report["qat_advised"] == report["ptq"]["qat_advised"]
    verdict = "QAT advised" if report["qat_advised"] else "no QAT needed"
    assert f"{verdict}. After quantization-aware training: int8" in validation_line(report)

    # a QAT model still losing too much says so, and says "even after" only when PTQ lost too much as well
    worse = report | {"accuracy_drop": 0.05, "accuracy_drop_too_large": True, "qat": qat | {"best_epoch": 1}}
    ptq_bad = worse | {"ptq": report["ptq"] | {"accuracy_drop": 0.04, "accuracy_drop_too_large": True}}
    ptq_fine = worse | {"ptq": report["ptq"] | {"accuracy_drop": 0.0, "accuracy_drop_too_large": False}}
    assert "even after quantization-aware training (post-training quantization lost 4.00)" in report_md(ptq_bad, run)
    assert "5.00 points" in drop_warning(ptq_fine, run) and "even after" not in drop_warning(ptq_fine, run)
    assert "kept no fine-tuned epoch" in drop_warning(worse | {"qat": qat | {"best_epoch": 0}}, run)
    # without QAT the remedy is named only when the validation clips call for it
    ptq_only = {k: v for k, v in worse.items() if k not in ("ptq", "qat")}
    assert f"ser-convert {run} --qat" in report_md(ptq_only | {"qat_advised": True}, run)
    advice = drop_warning(ptq_only | {"qat_advised": False}, run)
    assert "QAT is not advised" in advice and "--qat" not in advice


def test_a_refit_run_decides_on_qat_and_its_epoch_on_a_training_sample(synthetic_corpus: Path, tmp_path: Path) -> None:
    """A refit run has no validation part: ser-convert measures int8's loss, and QAT keeps its epoch, on training clips."""
    out = tmp_path / "refit"
    clips = discover(synthetic_corpus)
    tcfg = TrainConfig(model="audio_resnet", epochs=2, batch_size=16, warmup_epochs=1, refit=True)
    train_one(out, clips, load_corpus(synthetic_corpus, clips), "paper", 0, tcfg, FRONTEND, mcu_probe=False, show_progress=False)
    assert convert_main([str(out), "--data", str(synthetic_corpus), "--qat", "--qat-epochs", "1", "--quiet"]) == 0
    report = json.loads((out / "conversion.json").read_text())
    train_paths = {c["path"] for c in json.loads((out / "manifest.json").read_text())["clips"] if c["role"] == "train"}
    assert report["validation"]["role"] == report["ptq"]["validation"]["role"] == report["qat"]["val_role"] == "training"
    assert report["validation"]["clips"] == report["qat"]["val_clips"] == min(100, len(train_paths))
    assert "training clips (a refit run has no validation part)" in (out / "conversion.md").read_text()
