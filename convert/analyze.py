"""``ser-analyze``: what a ``.tflite`` model costs and whether the firmware can run it, before any build.

Any model, ours or not: its ops with versions, each operator's output shape, MACs and parameters,
the arena measured under the real TFLM interpreter on the host, flash and RAM against a board's
table, and every reason the firmware would refuse it, each with what to do. It reads the
flatbuffer and runs TFLM only; it never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from convert import budget
from convert.emit import board_arena
from convert.ops import TFLM_OPS, cmsis_nn_refusals
from convert.tflite_file import (
    _OP_NAMES,
    _TYPE_NAMES,
    MAC_OPS,
    MODEL_FILE,
    ModelFileError,
    _constant_tensors,
    _load,
    layer_macs,
    read_metadata,
    sha256,
)

# Tensor types the firmware's kernels take at the model's edges and inside it.
EDGE_TYPES = {"int8", "uint8", "int16", "int32", "float32"}
QUANTIZE_HINT = (
    "quantize it to full int8 first: TFLiteConverter with optimizations=[tf.lite.Optimize.DEFAULT], a "
    "representative_dataset and target_spec.supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8] "
    "(ser-convert does this for the project's own runs)"
)


@dataclass
class Layer:
    index: int
    op: str
    version: int
    inputs: list[str]  # "shape dtype" of each non-constant input
    outputs: list[str]
    macs: int
    params: int  # elements of the constant tensors this operator reads first


@dataclass
class Analysis:
    model: str
    sha256: str
    bytes: int
    ours: bool  # carries the project's metadata (front end, labels)
    inputs: list[dict]
    outputs: list[dict]
    ops: list[dict]  # {"op", "version", "count", "firmware"}
    layers: list[Layer]
    macs: int
    params: int
    arena_bytes: int | None
    budget: list[dict] = field(default_factory=list)  # pre-build flash and RAM lines against a board
    board: str | None = None
    problems: list[str] = field(default_factory=list)  # each says what is wrong and what to do

    @property
    def runnable(self) -> bool:
        return not self.problems


def load_model(path: Path) -> tuple[Path, bytes]:
    """A ``.tflite`` file, or a run folder's deployable model."""
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.exists():
        hint = f" (a run folder holds {MODEL_FILE} after ser-convert)" if path.is_dir() else ""
        raise ModelFileError(f"{file}: no such file{hint}")
    return file, file.read_bytes()


def _spec(graph, index: int) -> dict:
    t = graph.tensors[index]
    q = t.quantization
    scales = [] if q is None or q.scale is None else [float(s) for s in q.scale]
    zeros = [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint]
    name = t.name.decode() if isinstance(t.name, bytes) else f"tensor {index}"
    return {
        "name": name,
        "shape": [int(d) for d in (t.shape if t.shape is not None else [])],
        "dtype": _TYPE_NAMES.get(t.type, str(t.type)),
        "scale": scales[0] if len(scales) == 1 else scales,
        "zero_point": zeros[0] if len(zeros) == 1 else zeros,
    }


def _describe(spec: dict) -> str:
    return f"{'x'.join(map(str, spec['shape'])) or 'scalar'} {spec['dtype']}"


KERNELS = ("cmsis-nn", "reference")  # the firmware's kernel sets: CMSIS-NN (with ours; the default) or TFLM's reference


def analyze(
    tflite: bytes, name: str = "model", board_name: str | None = None, measure_arena: bool = True, kernels: str = "cmsis-nn"
) -> Analysis:
    model = _load(tflite)
    problems: list[str] = []
    if len(model.subgraphs) != 1:
        problems.append(
            f"{len(model.subgraphs)} subgraphs: the firmware runs single-subgraph models (control flow such as "
            "WHILE/IF is not supported); export the model without control flow"
        )
    graph = model.subgraphs[0]
    constant = _constant_tensors(model)
    counted: set[int] = set()
    layers: list[Layer] = []
    macs = layer_macs(tflite)
    op_counts: dict[tuple[str, int], int] = {}
    for index, op in enumerate(graph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        op_name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        if op_name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            op_name = f"CUSTOM:{custom}"
        key = (op_name, int(code.version))
        op_counts[key] = op_counts.get(key, 0) + 1
        inputs = [int(i) for i in op.inputs if i >= 0]
        params = 0
        for i in inputs:
            shape_like = _TYPE_NAMES.get(graph.tensors[i].type) in ("int32", "int64") and op_name not in MAC_OPS
            if i in constant and i not in counted and not shape_like:
                counted.add(i)
                params += int(np.prod(graph.tensors[i].shape))
        layers.append(
            Layer(
                index,
                op_name,
                int(code.version),
                [_describe(_spec(graph, i)) for i in inputs if i not in constant],
                [_describe(_spec(graph, int(o))) for o in op.outputs],
                macs[index],
                params,
            )
        )
    ops = [{"op": o, "version": v, "count": n, "firmware": o in TFLM_OPS} for (o, v), n in op_counts.items()]
    missing = [f"{o['op']} (v{o['version']})" for o in ops if not o["firmware"]]
    if missing:
        problems.append(
            f"op(s) TFLM has no built-in kernel for: {', '.join(missing)}; rebuild the model from TFLM's "
            f"{len(TFLM_OPS)} built-in ops (convert/ops.py lists them) or register the kernel there and link it "
            "into the firmware's TFLM build"
        )
    if kernels != "reference":
        problems += [
            f"{why}; build the firmware with TFLM's reference kernels (ser-validate --kernels reference, or CMake "
            "-DSER_CMSIS_NN=OFF)"
            for why in cmsis_nn_refusals(tflite)
        ]
    io_in = [_spec(graph, int(i)) for i in graph.inputs]
    io_out = [_spec(graph, int(i)) for i in graph.outputs]
    activation_types = {_TYPE_NAMES.get(graph.tensors[int(o)].type) for op in graph.operators or [] for o in op.outputs}
    if activation_types and activation_types <= {"float32"}:
        problems.append(f"a float model (every activation is float32): the firmware runs int8 models; {QUANTIZE_HINT}")
    for spec in io_in + io_out:
        if spec["dtype"] not in EDGE_TYPES:
            problems.append(f"tensor {spec['name']!r} is {spec['dtype']}: the firmware takes {', '.join(sorted(EDGE_TYPES))}")
    arena = None
    if measure_arena:
        from convert.interpreters import tflm_arena_bytes

        try:
            arena = tflm_arena_bytes(tflite)
        except (RuntimeError, ValueError) as exc:
            problems.append(f"TFLM on the host cannot run it ({exc}): the board would not either")
    result = Analysis(
        name,
        sha256(tflite),
        len(tflite),
        read_metadata(tflite) is not None,
        io_in,
        io_out,
        ops,
        layers,
        sum(layer.macs for layer in layers),
        sum(layer.params for layer in layers),
        arena,
    )
    result.problems = problems
    if board_name and arena is not None:
        b = budget.board(board_name)
        lines = budget.pre_build(b, len(tflite), board_arena(tflite, arena))  # the arena the firmware gets
        result.board = board_name
        result.budget = [
            {"memory": ln.memory, "used": ln.used, "capacity": ln.capacity, "fits": ln.fits, "parts": ln.parts} for ln in lines
        ]
        for ln in lines:
            if not ln.fits:
                problems.append(
                    f"{ln.memory}: needs {ln.used / 1024:.1f} KiB, {board_name} has {ln.capacity / 1024:.0f} KiB; pick a "
                    f"board with more {ln.memory} (ser-analyze --board, see convert/boards.json) or shrink the model"
                )
    return result


def _yes(fits: bool) -> str:
    return "yes" if fits else "**NO**"


def to_markdown(a: Analysis) -> str:
    lines = [
        f"# {a.model}",
        "",
        f"sha256 {a.sha256[:16]}..., {a.bytes:,} bytes, {'with' if a.ours else 'without'} ser-tinyml metadata",
        "",
        f"- MACs per inference: {a.macs:,}",
        f"- parameters: {a.params:,}",
        f"- TFLM arena (host, measured): {f'{a.arena_bytes:,} bytes' if a.arena_bytes is not None else 'not measured'}",
        "",
        "| edge | name | shape | type | scale | zero point |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for edge, specs in (("input", a.inputs), ("output", a.outputs)):
        for s in specs:
            shape = "x".join(map(str, s["shape"]))
            lines.append(f"| {edge} | {s['name']} | {shape} | {s['dtype']} | {s['scale']} | {s['zero_point']} |")
    lines += ["", "| op | version | count | firmware |", "| --- | --- | --- | --- |"]
    lines += [f"| {o['op']} | {o['version']} | {o['count']} | {'yes' if o['firmware'] else '**no**'} |" for o in a.ops]
    lines += ["", "| # | op | inputs | outputs | MACs | params |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [
        f"| {ly.index} | {ly.op} v{ly.version} | {', '.join(ly.inputs)} | {', '.join(ly.outputs)} | {ly.macs:,} | {ly.params:,} |"
        for ly in a.layers
    ]
    if a.board:
        lines += ["", f"Before a build, on {a.board} (model + firmware allowance; arena + firmware allowance):", ""]
        lines += ["| memory | used | capacity | fits |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {b['memory']} | {b['used'] / 1024:.1f} KiB | {b['capacity'] / 1024:.0f} KiB | {_yes(b['fits'])} |"
            for b in a.budget
        ]
    lines += ["", "The firmware can run it." if a.runnable else "The firmware cannot run it:"]
    lines += [f"- {p}" for p in a.problems]
    return "\n".join(lines) + "\n"


def to_json(a: Analysis) -> str:
    return json.dumps({**asdict(a), "runnable": a.runnable}, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ser-analyze",
        description="Analyze any .tflite model before a build: ops with versions, per-layer shapes, MACs and parameters, "
        "the TFLM arena measured on the host, flash and RAM against a board, and every reason the firmware would "
        "refuse it. Exit status 0 when the firmware can run it, 2 otherwise.",
    )
    p.add_argument("model", type=Path, help="a .tflite file or a run folder (its model_int8.tflite)")
    p.add_argument("--board", choices=sorted(budget.boards()), help="hold flash and RAM against this board")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--no-arena", action="store_true", help="skip the arena measurement (no TFLM run)")
    p.add_argument(
        "--kernels", choices=KERNELS, default="cmsis-nn", help="the firmware's kernel set (default cmsis-nn, with ours)"
    )
    args = p.parse_args(argv)
    try:
        file, tflite = load_model(args.model)
        result = analyze(tflite, file.name, args.board, measure_arena=not args.no_arena, kernels=args.kernels)
    except ModelFileError as exc:
        print(f"ser-analyze: {args.model}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(to_json(result) if args.json else to_markdown(result))
    return 0 if result.runnable else 2


if __name__ == "__main__":
    sys.exit(main())
