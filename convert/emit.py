"""Emit an int8 model and everything the firmware must know about it, from Jinja2 templates.

Output (a generated folder; nothing in it is edited by hand, the same inputs give identical bytes):
``model_data.h/.cc`` (the model as an aligned const array, its length and SHA-256),
``op_resolver.h`` (a MicroMutableOpResolver with exactly the model's ops),
``model_config.h`` (I/O shapes and quantization, labels, arena size, front-end constants) and
``frontend_tables.c`` (Hann window, FFT twiddles and sparse mel filter bank for the board's front end,
``firmware/app/ser_frontend.c``; ``SER_FE_CONFIG_INIT`` in ``model_config.h`` fills its ``ser_fe_config``;
for a model ending at its embedding, also the classifier of ``firmware/app/ser_embedding_norm.h``).
A model without our metadata (a foreign ``.tflite``) is emitted with ``SER_FE_KIND_NONE``: the
firmware then takes the model input directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import numpy as np

from convert.interpreters import tflm_arena_bytes
from convert.ops import cmsis_nn_arena_extra, registrations
from convert.tflite_file import (
    TFLITE_TYPE_CODES,
    TensorSpec,
    graph_io,
    model_frontend,
    model_head,
    model_labels,
    operator_names,
    resource_variables,
    sha256,
)
from train.embedding_c import MAX_DIM as EMBED_MAX_DIM
from train.frontend import fft_twiddles, hann_window, mel_filterbank, sparse_mel
from train.frontend_c import KINDS, SPEAKER_NORM_MODES, workspace_floats

TEMPLATES = Path(__file__).with_name("templates")
OUTPUTS = ("model_data.h", "model_data.cc", "op_resolver.h", "model_config.h", "frontend_tables.c")
ARENA_MARGIN_FRACTION = 0.10  # CMSIS-NN scratch buffers and 32-bit layout differ from the host
ARENA_MARGIN_MIN = 4096
# The most scores of a clip's RESULT: it must fit the board's kept reply (ser_app.c KEPT_PAYLOAD_MAX 120 bytes =
# 14 + scores). A model with more outputs runs on raw tensors only.
CLIP_MAX_SCORES = 106
# The most labels INFO carries (ser_protocol.h SER_INFO_MAX_LABELS): a model with more scores gets none.
MAX_LABELS = 32


def has_clip_path(inputs: list[TensorSpec], outputs: list[TensorSpec], scores: int | None = None) -> bool:
    """Whether the board can feed the model clips (PROTOCOL.md 4) and answer with a RESULT: one int8 input
    and one int8 output, and at most CLIP_MAX_SCORES scores (``scores``: a classifier after the model;
    else the output's values). Every model takes raw tensors (PROTOCOL.md 12)."""
    return (
        len(inputs) == 1
        and len(outputs) == 1
        and inputs[0].dtype == "int8"
        and outputs[0].dtype == "int8"
        and (outputs[0].elements if scores is None else scores) <= CLIP_MAX_SCORES
    )


def cfloat(value: float) -> str:
    """A float32 C literal that round-trips exactly."""
    v = np.float32(value)
    if not math.isfinite(v):
        raise ValueError(f"non-finite constant {value}")
    return np.format_float_scientific(v, unique=True, trim="0", exp_digits=2) + "f"


def _lines(values: list[str], per_line: int) -> list[str]:
    return [", ".join(values[i : i + per_line]) + "," for i in range(0, len(values), per_line)]


def board_arena(tflite: bytes, measured: int) -> int:
    """The board's arena for a model whose arena host TFLM measured: a margin (32-bit layout, CMSIS-NN scratch
    buffers) and what CMSIS-NN's kernels keep that the host's do not."""
    margin = max(ARENA_MARGIN_MIN, int(measured * ARENA_MARGIN_FRACTION))
    return (measured + margin + cmsis_nn_arena_extra(tflite) + 15) // 16 * 16


def board_labels(
    tflite: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec], given: list[str] | None = None, scores: int | None = None
) -> list[str]:
    """The labels INFO carries, one per score of a clip's RESULT (``scores`` of them; default the output's values):
    none for a model without a clip path or with more than MAX_LABELS scores (ser-validate --labels names any
    model's classes in its report)."""
    scores = outputs[0].elements if scores is None and outputs else scores
    if has_clip_path(inputs, outputs, scores) and scores <= MAX_LABELS:
        return model_labels(tflite, scores, given)
    if given is not None:
        raise ValueError(
            f"labels name the scores of a clip's RESULT, and the board carries them for a model of one int8 input and "
            f"one int8 output of at most {MAX_LABELS} values; this one has none (ser-validate --labels names its classes)"
        )
    return []


def render(
    tflite: bytes, arena_measured: int | None = None, labels: list[str] | None = None, layers: bool = False
) -> dict[str, str]:
    """File name -> text of every emitted file. ``layers``: the firmware keeps every tensor after Invoke
    (SER_PRESERVE_TENSORS, for per-layer capture) in an arena measured that way."""
    ops = registrations(tflite)
    inputs, outputs = graph_io(tflite)
    if not inputs or not outputs:
        raise ValueError(f"model has {len(inputs)} inputs and {len(outputs)} outputs: the board needs at least one of each")
    in_spec, out_spec = inputs[0], outputs[0]  # INFO's INPUT and OUTPUT; the clip path's tensors
    digest = sha256(tflite)
    frontend = model_frontend(tflite)
    head = model_head(tflite)
    scores = head.classes if head is not None else None  # a RESULT's scores: the classifier's, or the output's
    clip_path = has_clip_path(inputs, outputs, scores)
    if frontend is not None and not clip_path:
        raise ValueError("a model with our front end must have one int8 input and one int8 output")
    if frontend is not None and tuple(in_spec.shape[1:]) != frontend.input_shape:
        raise ValueError(f"model input {in_spec.shape} does not match its front end's {frontend.input_shape}")
    if head is not None and (frontend is None or head.dim != out_spec.elements or not 0 < head.dim <= EMBED_MAX_DIM):
        raise ValueError(
            f"the embedding classifier reads {head.dim} values; the model must carry our front end and output that many "
            f"(at most {EMBED_MAX_DIM}), not {out_spec.elements}"
        )
    labels = board_labels(tflite, inputs, outputs, labels, scores)
    measured = arena_measured if arena_measured is not None else tflm_arena_bytes(tflite, preserve_all=layers)

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters["cfloat"] = cfloat
    context = {
        "banner": f"/* Generated by ser-emit from model sha256 {digest}. Do not edit: run ser-emit again. */",
        "hex_lines": _lines([f"0x{b:02x}" for b in tflite], 12),
        "model_len": len(tflite),
        "sha256": digest,
        "ops": ops,
        "input": in_spec,
        "output": out_spec,
        "input_elements": in_spec.elements,
        "output_elements": out_spec.elements,
        "input_type_code": TFLITE_TYPE_CODES.get(in_spec.dtype, 0),
        "output_type_code": TFLITE_TYPE_CODES.get(out_spec.dtype, 0),
        "input_bytes": in_spec.nbytes,
        "output_bytes": out_spec.nbytes,
        "n_inputs": len(inputs),
        "n_outputs": len(outputs),
        "clip_path": clip_path,
        "labels": labels,
        "operators": len(operator_names(tflite)),
        "resource_variables": resource_variables(tflite),
        "arena_measured": measured,
        "arena_margin": board_arena(tflite, measured) - measured,
        "arena_bytes": board_arena(tflite, measured),
        "preserve_tensors": layers,
        "frontend": frontend,
        "frontend_note": "from the model's metadata" if frontend else "none: the model input is sent as is",
        "fe_kind_code": KINDS[frontend.kind] if frontend else 0,
        "fe_workspace_floats": workspace_floats(frontend) if frontend else 0,
        "speaker_norm": SPEAKER_NORM_MODES.get(frontend.speaker_norm, 0) if frontend else 0,
        "head": head,
        "result_scores": scores if scores is not None else out_spec.elements,
    }
    if head is not None:
        context |= {
            "head_weight_lines": _lines([cfloat(v) for v in head.weights.reshape(-1)], 6),
            "head_bias_lines": _lines([cfloat(v) for v in head.bias], 6),
            "head_mean_lines": _lines([cfloat(v) for v in head.prior_mean], 6),
            "head_std_lines": _lines([cfloat(v) for v in head.prior_std], 6),
        }
    if frontend is not None and frontend.kind == "logmel":
        starts, counts, offsets, weights = sparse_mel(mel_filterbank(frontend))
        cos, sin = fft_twiddles(frontend)
        context |= {
            "num_frames": frontend.num_frames,
            "window_lines": _lines([cfloat(v) for v in hann_window(frontend)], 6),
            "fft_cos_lines": _lines([cfloat(v) for v in cos], 6),
            "fft_sin_lines": _lines([cfloat(v) for v in sin], 6),
            "mel_start": starts,
            "mel_count": counts,
            "mel_offset": offsets,
            "mel_weights": weights,
            "weight_lines": _lines([cfloat(v) for v in weights], 6),
            "prior_mean_lines": _lines([cfloat(v) for v in frontend.prior_mean], 6),
            "prior_std_lines": _lines([cfloat(v) for v in frontend.prior_std], 6),
        }
    return {name: env.get_template(name + ".j2").render(context) for name in OUTPUTS}


def emit(
    tflite: bytes, out_dir: Path, arena_measured: int | None = None, labels: list[str] | None = None, layers: bool = False
) -> list[Path]:
    """Write the generated files into ``out_dir`` (other files there are left alone)."""
    files = render(tflite, arena_measured, labels, layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written
