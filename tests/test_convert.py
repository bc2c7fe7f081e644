"""Conversion: a short-trained run quantized, verified in real TFLM and LiteRT, emitted, compiled, budgeted."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

from convert.budget import board, elf_usage
from convert.cli import budget_main, convert_main, emit_main
from convert.emit import emit, render
from convert.interpreters import TflmRunner, quantize_input, quiet_fds
from convert.ops import UnsupportedOpError, check_ops
from convert.quantize import MODEL_FILE, quantize_int8
from convert.tflite_file import ModelFileError, buffers_aligned, io_specs, read_metadata
from convert.verify import ACCURACY_DROP_LIMIT
from train.corpus import discover, load_corpus, read_wav
from train.fit import TrainConfig
from train.frontend import FrontEndConfig, clip_features
from train.labels import label_index
from train.run import default_frontend, train_one
from train.splits import clips_with_role, load_manifest

ARM_CXX = ["arm-none-eabi-g++", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
ARM_CC = ["arm-none-eabi-gcc", *ARM_CXX[1:]]
WARNINGS = ["-Wall", "-Wextra", "-Werror"]


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed: run scripts/bootstrap (installs gcc-arm-none-eabi and g++)")


@pytest.fixture(scope="module")
def run(synthetic_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spectrogram run trained for two epochs on the synthetic corpus, converted by the CLI."""
    out = tmp_path_factory.mktemp("convert") / "run"
    clips = discover(synthetic_corpus)
    tcfg = TrainConfig(model="spectrogram_resnet", epochs=2, batch_size=16, warmup_epochs=1)
    train_one(
        out,
        clips,
        load_corpus(synthetic_corpus, clips),
        "paper",
        0,
        tcfg,
        default_frontend(tcfg.model),
        mcu_probe=False,
        show_progress=False,
    )
    assert convert_main([str(out), "--data", str(synthetic_corpus), "--quiet"]) == 0
    return out


def test_model_is_full_int8_aligned_and_carries_its_front_end(run: Path) -> None:
    tflite = (run / MODEL_FILE).read_bytes()
    inp, out = io_specs(tflite)
    assert inp.dtype == out.dtype == "int8"
    assert inp.scale > 0 and out.scale > 0
    assert buffers_aligned(tflite, 16)
    meta = read_metadata(tflite)
    assert FrontEndConfig(**meta["frontend"]) == FrontEndConfig.load(run / "frontend.json")
    assert meta["labels"] == ["angry", "fear", "happy", "neutral", "sad", "surprise"]


def test_tflm_agrees_with_litert_reference_kernels(run: Path) -> None:
    report = json.loads((run / "conversion.json").read_text())
    ref = report["tflm_vs"]["litert_reference"]
    assert ref["clips"] == report["test_clips"] > 0
    # the two interpreters' kernels may round a score 1 LSB apart now and then (one clip in 12 here)
    assert ref["bit_exact_clips"] >= ref["clips"] - max(1, 0.05 * ref["clips"]) and ref["max_lsb_diff"] <= 1
    assert report["int8_vs_float_scores"]["cosine"] > 0.9
    assert report["tflm_arena_bytes"] > 0
    assert {"float", "int8", "prediction_agreement_float_int8", "accuracy_drop"} <= set(report)
    assert "litert_default" in report["tflm_vs"]
    assert (run / "conversion.md").read_text().startswith("# int8 conversion")


def test_validation_clips_decide_on_qat_and_are_scored_by_the_real_models(run: Path, synthetic_corpus: Path) -> None:
    report = json.loads((run / "conversion.json").read_text())
    val = clips_with_role(load_manifest(run / "manifest.json"), "val")
    v = report["validation"]
    assert v["clips"] == len(val) > 0

    # scored again here, independently: the run's Keras model and its int8 model in TFLM
    cfg = FrontEndConfig.load(run / "frontend.json")
    x = np.stack([clip_features(read_wav(synthetic_corpus / c["path"]), cfg) for c in val])
    y = np.array([label_index(c["emotion"]) for c in val])
    float_pred = keras.models.load_model(run / "model.keras").predict(x, verbose=0).argmax(1)
    tflite = (run / MODEL_FILE).read_bytes()
    in_spec = io_specs(tflite)[0]
    tflm = TflmRunner(tflite)
    int8_pred = np.array([tflm(quantize_input(xi, in_spec)).argmax() for xi in x])
    assert v["float_accuracy"] == pytest.approx(np.mean(float_pred == y))
    assert v["int8_accuracy"] == pytest.approx(np.mean(int8_pred == y))
    assert v["accuracy_drop"] == pytest.approx(v["float_accuracy"] - v["int8_accuracy"])
    assert report["qat_advised"] == (v["accuracy_drop"] > ACCURACY_DROP_LIMIT)
    assert "validation clips, which decide on quantization-aware training" in (run / "conversion.md").read_text()


def _tiny_model(activation: str, tile: bool = False) -> keras.Model:
    inputs = keras.Input((1, 16, 1))
    x = keras.layers.Conv2D(4, (1, 3), activation=activation)(inputs)
    if tile:  # TILE: a TFLite built-in that TFLM has no kernel for
        x = keras.layers.Lambda(lambda t: keras.ops.tile(t, (1, 2, 1, 1)))(x)
    return keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))


def _rep(shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]


def test_unsupported_op_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tflite = quantize_int8(_tiny_model("relu", tile=True), _rep((1, 16, 1)))
    with pytest.raises(UnsupportedOpError, match="TILE"):
        check_ops(tflite)
    (tmp_path / "tile.tflite").write_bytes(tflite)
    assert emit_main([str(tmp_path / "tile.tflite"), "--out", str(tmp_path / "gen")]) == 2
    assert "TFLM has no built-in kernel for TILE (v" in capsys.readouterr().err
    assert not (tmp_path / "gen").exists()


def test_quiet_fds_passes_on_only_what_a_failing_block_wrote(capfd: pytest.CaptureFixture[str]) -> None:
    """The converter's C++ output is dropped when it succeeds and is the reason when it fails."""
    with quiet_fds(replay_on_error=True):
        os.write(2, b"fully_quantize: 0, inference_type: 6\n")
    with pytest.raises(RuntimeError), quiet_fds(replay_on_error=True):
        os.write(2, b"error: 'tfl.custom' op is neither a custom op nor a flex op\n")
        raise RuntimeError("converter failed")
    err = capfd.readouterr().err
    assert "neither a custom op" in err and "fully_quantize" not in err


def test_not_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="TFL3"):
        render(b"definitely not a flatbuffer")


def test_emission_is_reproducible_and_array_equals_model(run: Path, tmp_path: Path) -> None:
    tflite = (run / MODEL_FILE).read_bytes()
    for out in ("a", "b"):
        assert emit_main([str(run), "--out", str(tmp_path / out)]) == 0
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    source = (tmp_path / "a" / "model_data.cc").read_text()
    body = source[source.index("g_model_data[] = {") : source.index("};")]
    parsed = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))
    assert parsed == tflite
    digest = hashlib.sha256(tflite).hexdigest()
    assert f'g_model_sha256[] = "{digest}"' in source
    assert f"g_model_data_len = {len(tflite)}u" in source
    assert "alignas(16)" in source and f"model sha256 {digest}" in source.splitlines()[0]


def _compile_emitted(gen: Path, tmp_path: Path) -> list[Path]:
    """Compile every emitted C/C++ file (and the header in a C TU) with host gcc and the Arm compiler."""
    (gen / "config_check.c").write_text('#include "model_config.h"\nint ser_labels(void) { return SER_NUM_LABELS; }\n')
    objects = []
    for compiler in (["gcc"], ARM_CC):
        for src in ("frontend_tables.c", "config_check.c"):
            obj = tmp_path / f"{compiler[0]}-{src}.o"
            subprocess.run([*compiler, "-std=c11", *WARNINGS, "-c", str(gen / src), "-o", str(obj)], check=True)
            objects.append(obj)
    for compiler in (["g++"], ARM_CXX):
        obj = tmp_path / f"{compiler[0]}-model_data.o"
        subprocess.run([*compiler, "-std=c++17", *WARNINGS, "-c", str(gen / "model_data.cc"), "-o", str(obj)], check=True)
        objects.append(obj)
    return objects


def test_emitted_code_compiles_warning_free(run: Path, tmp_path: Path) -> None:
    need("gcc")
    need("arm-none-eabi-gcc")
    gen = tmp_path / "gen"
    emit((run / MODEL_FILE).read_bytes(), gen)
    _compile_emitted(gen, tmp_path)


def test_op_resolver_compiles_against_tflm(run: Path, tmp_path: Path) -> None:
    deps = os.environ.get("SER_DEPS_DIR")
    if not deps:
        pytest.skip("TFLM sources not given: set SER_DEPS_DIR to a folder with tflite-micro/, flatbuffers/, gemmlowp/, ruy/")
    need("arm-none-eabi-g++")
    gen = tmp_path / "gen"
    emit((run / MODEL_FILE).read_bytes(), gen)
    (gen / "resolver_check.cc").write_text(
        '#include "op_resolver.h"\nint ser_register(void) { static ModelOpResolver r; return RegisterModelOps(r); }\n'
    )
    system = [f for d in ("tflite-micro", "flatbuffers/include", "gemmlowp", "ruy") for f in ("-isystem", str(Path(deps) / d))]
    system += ["-I", str(Path(__file__).resolve().parents[1] / "firmware" / "kernels")]  # ser_kernels.h
    for compiler in (["g++"], ARM_CXX):
        subprocess.run(
            [
                *compiler,
                "-std=c++17",
                *WARNINGS,
                "-fno-exceptions",
                "-fno-rtti",
                *system,
                "-c",
                str(gen / "resolver_check.cc"),
                "-o",
                str(tmp_path / "r.o"),
            ],
            check=True,
        )


def test_foreign_model_without_metadata_is_emitted(tmp_path: Path) -> None:
    need("arm-none-eabi-gcc")
    tflite = quantize_int8(_tiny_model("relu"), _rep((1, 16, 1)))
    assert read_metadata(tflite) is None
    (tmp_path / "foreign.tflite").write_bytes(tflite)
    gen = tmp_path / "gen"
    assert emit_main([str(tmp_path / "foreign.tflite"), "--out", str(gen)]) == 0
    config = (gen / "model_config.h").read_text()
    assert "#define SER_FE_KIND_NONE 1" in config and "#define SER_INPUT_ELEMENTS 16" in config
    _compile_emitted(gen, tmp_path)


def test_budget_refuses_a_model_too_big_for_the_small_board(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert budget_main([str(run), "--board", "nrf52832dk"]) == 2
    err = capsys.readouterr().err
    assert "does NOT fit nrf52832dk" in err and "RAM needs" in err
    assert budget_main([str(run), "--board", "nucleo-f446re"]) == 0
    assert "fits nucleo-f446re" in capsys.readouterr().out


def test_budget_reads_a_linked_elf(run: Path, tmp_path: Path) -> None:
    need("arm-none-eabi-gcc")
    gen = tmp_path / "gen"
    emit((run / MODEL_FILE).read_bytes(), gen)
    (gen / "main.c").write_text(
        '#include "model_data.h"\nunsigned char g_ram_buffer[70000];\nint ser_marker = 7;\n'
        "int main(void) { return g_model_data[g_model_data_len - 1] + g_ram_buffer[ser_marker]; }\n"
    )
    script = tmp_path / "link.ld"
    script.write_text(
        "MEMORY { FLASH (rx) : ORIGIN = 0x08000000, LENGTH = 512K\n RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 128K }\n"
        "SECTIONS { .text : { *(.text*) *(.rodata*) } > FLASH\n"
        " .data : { *(.data*) } > RAM AT > FLASH\n .bss (NOLOAD) : { *(.bss*) *(COMMON) } > RAM }\n"
    )
    elf = tmp_path / "fw.elf"
    subprocess.run(
        [*ARM_CXX, "-nostdlib", "-T", str(script), "-o", str(elf), str(gen / "main.c"), str(gen / "model_data.cc")], check=True
    )
    flash, ram = elf_usage(elf, board("nucleo-f446re"))
    model_bytes = len((run / MODEL_FILE).read_bytes())
    assert model_bytes <= flash.used < model_bytes + 4096
    assert 70000 <= ram.used < 70000 + 256
    assert flash.fits and ram.fits
    assert budget_main(["--board", "nrf52832dk", "--elf", str(elf)]) == 2  # 70 KB of RAM on a 64 KB part


def test_a_foreign_model_gets_its_own_labels_never_the_emotions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.boards_under_test import bare_model

    model = tmp_path / "foreign.tflite"
    model.write_bytes(bare_model())  # six outputs, no metadata
    assert emit_main([str(model), "--out", str(tmp_path / "a")]) == 0
    config = (tmp_path / "a" / "model_config.h").read_text()
    assert '#define SER_LABELS {"class_0", "class_1", "class_2", "class_3", "class_4", "class_5"}' in config

    names = tmp_path / "labels.txt"
    names.write_text("yes\nno\n\nup\ndown\nleft\nright\n")
    assert emit_main([str(model), "--out", str(tmp_path / "b"), "--labels", str(names)]) == 0
    assert '#define SER_LABELS {"yes", "no", "up", "down", "left", "right"}' in (tmp_path / "b" / "model_config.h").read_text()

    names.write_text("yes\nno\n")
    assert emit_main([str(model), "--out", str(tmp_path / "c"), "--labels", str(names)]) != 0
    assert "6 outputs but the labels file names 2 labels" in capsys.readouterr().err
    names.write_text('a"b\n' * 6)
    assert emit_main([str(model), "--out", str(tmp_path / "d"), "--labels", str(names)]) != 0
    assert "without quotes" in capsys.readouterr().err
