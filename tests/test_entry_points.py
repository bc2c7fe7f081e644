"""Every command line starts without TensorFlow: ``--help`` of each, and ser-emit/ser-budget on a real model.

Each runs in a fresh interpreter, which then reports the heavy modules it ended up importing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from convert.quantize import quantize_int8
from convert.tflite_file import with_metadata
from train.frontend import DEFAULT_LOGMEL
from train.labels import EMOTIONS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "librosa")  # seconds to import each, or (librosa) SciPy and Numba with it


def entry_points() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: command -> module:function."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, flags=re.MULTILINE))


def heavy_imports(entry: str, argv: list[str]) -> tuple[object, list[str]]:
    """Run ``entry`` (module:function) with ``argv`` in a fresh interpreter: its exit status and the heavy modules loaded."""
    module, function = entry.split(":")
    code = (
        "import sys\n"
        f"from {module} import {function} as entry\n"
        "try:\n"
        f"    status = entry({argv!r})\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        f"print('\\nRESULT', status, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    status, loaded = re.search(r"^RESULT (\S+) \[(.*)\]$", out, flags=re.MULTILINE).groups()
    return status, [m.strip("' ") for m in loaded.split(",") if m]


def test_every_command_is_listed() -> None:
    assert {"ser-train", "ser-main", "ser-convert", "ser-emit", "ser-budget", "ser-eval"} <= set(entry_points())


@pytest.mark.parametrize("command", sorted(entry_points()))
def test_help_imports_no_tensorflow(command: str) -> None:
    status, loaded = heavy_imports(entry_points()[command], ["--help"])
    assert status in ("0", "None") and loaded == []


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small int8 model on the log-mel front end, with the pipeline's metadata (what ser-convert writes)."""
    inputs = keras.Input(DEFAULT_LOGMEL.input_shape)
    x = keras.layers.Conv2D(4, (3, 3), strides=(2, 2), activation="relu")(inputs)
    outputs = keras.layers.Dense(len(EMOTIONS), activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    rng = np.random.default_rng(0)
    tflite = quantize_int8(keras.Model(inputs, outputs), [rng.standard_normal(DEFAULT_LOGMEL.input_shape) for _ in range(8)])
    path = tmp_path_factory.mktemp("entry") / "model_int8.tflite"
    path.write_bytes(with_metadata(tflite, {"format": 1, "frontend": DEFAULT_LOGMEL.__dict__, "labels": list(EMOTIONS)}))
    return path


def test_emit_and_budget_import_no_tensorflow(model: Path) -> None:
    gen = model.parent / "gen"
    assert heavy_imports(entry_points()["ser-emit"], [str(model), "--out", str(gen)]) == ("0", [])
    assert "g_fe_mel_weights" in (gen / "frontend_tables.c").read_text()  # the log-mel tables were emitted
    assert heavy_imports(entry_points()["ser-budget"], [str(model), "--board", "qemu-mps2-an386"]) == ("0", [])
