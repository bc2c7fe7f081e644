"""Run an int8 model in the real runtimes: TFLM (the board's reference) and LiteRT (two kernel sets).

The input is quantized once, in float32 exactly as the board does it, and the same int8 array is fed
to every interpreter, so differences come from kernels only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from convert.tflite_file import TensorSpec, graph_io
from train import frontend


def quantize_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """float -> int8 with the model's input scale and zero point, exactly as the board does it."""
    return frontend.quantize_input(x, spec.scale, spec.zero_point)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return (np.asarray(q, np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)


@contextlib.contextmanager
def quiet_fds(replay_on_error: bool = False) -> Iterator[None]:
    """Silence C++ output written straight to fd 1/2, past Python and past any log level (TFLM's allocation
    failures, LiteRT's INFO lines, the TFLite converter's ``fully_quantize: ...`` line).

    ``replay_on_error``: when the block raises, what it wrote goes to ``sys.stderr`` after all (the reason).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    failed = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)
            if failed and replay_on_error:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


HOST_ARENA = 16 * 1024 * 1024  # bytes: more than any board holds


class TflmRunner:
    """TFLM's own interpreter (the ``tflite-micro`` package): what the firmware must reproduce.

    ``run`` takes and gives every input and output in its own type and shape; calling the runner with one
    int8 array is the single-input, single-output shortcut. ``preserve_all``: TFLM keeps every tensor
    after Invoke (``tensor(i)``), as the board's per-layer capture build does."""

    name = "tflm"

    def __init__(self, tflite: bytes, arena_size: int | None = None, preserve_all: bool = False) -> None:
        from tflite_micro.python.tflite_micro import runtime

        if arena_size is None:  # TFLM's own default (10 x the model) is too small for small models of big tensors
            arena_size = max(10 * len(tflite), HOST_ARENA)
        self.inputs, self.outputs = graph_io(tflite)
        config = runtime.InterpreterConfig.kPreserveAllTensors if preserve_all else runtime.InterpreterConfig.kAllocationRecording
        with quiet_fds():  # its "Number of resource variables" line
            self._interp = runtime.Interpreter.from_bytes(tflite, arena_size=arena_size, intrepreter_config=config)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._interp.reset()
        for spec, values in zip(self.inputs, inputs, strict=True):
            self._interp.set_input(np.asarray(values, dtype=spec.numpy_dtype).reshape(spec.shape), spec.index)
        self._interp.invoke()
        return [np.array(self._interp.get_output(spec.index)).reshape(spec.shape) for spec in self.outputs]

    def __call__(self, q_input: np.ndarray) -> np.ndarray:
        return self.run([q_input])[0].reshape(-1)

    def tensor(self, index: int) -> np.ndarray:
        """Tensor ``index`` of the model's tensor table after the last run (``preserve_all`` only)."""
        return np.array(self._interp.GetTensor(index, 0)["tensor_data"])


class LiteRtRunner:
    """LiteRT (``ai-edge-litert``) with either the reference kernels or its default (optimized) ones; the
    reference kernels are a second opinion beside TFLM (TFLM's kernels derive from them)."""

    def __init__(self, tflite: bytes, reference_kernels: bool) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
        self.name = "litert_reference" if reference_kernels else "litert_default"
        self.inputs, self.outputs = graph_io(tflite)
        with quiet_fds():
            self._interp = Interpreter(model_content=tflite, experimental_op_resolver_type=resolver)
            self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for detail, spec, values in zip(self._in, self.inputs, inputs, strict=True):
            self._interp.set_tensor(detail["index"], np.asarray(values, dtype=spec.numpy_dtype).reshape(detail["shape"]))
        self._interp.invoke()
        return [
            np.array(self._interp.get_tensor(d["index"])).reshape(spec.shape)
            for d, spec in zip(self._out, self.outputs, strict=True)
        ]

    def __call__(self, q_input: np.ndarray) -> np.ndarray:
        return self.run([q_input])[0].reshape(-1)


# LiteRT as a second opinion runs in a child process: its reference kernels can corrupt the heap on a model
# TFLM runs (SVDF in keyword_scrambled_8bit), which would take the whole validation down with them.
_LITERT_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from convert.interpreters import LiteRtRunner
folder = Path(sys.argv[1])
runner = LiteRtRunner((folder / "model.tflite").read_bytes(), reference_kernels=True)
with np.load(folder / "inputs.npz") as z:
    n, k = json.loads((folder / "shape.json").read_text())
    outputs, errors = {}, {}
    for i in range(n):
        try:
            for j, out in enumerate(runner.run([z[f"{i}_{m}"] for m in range(k)])):
                outputs[f"{i}_{j}"] = out
        except (RuntimeError, ValueError) as exc:
            errors[i] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
np.savez(folder / "outputs.npz", **outputs)
(folder / "errors.json").write_text(json.dumps(errors))
"""


LITERT_SECONDS = 120  # the child's allowance besides 10 s per input


def litert_reference_outputs(tflite: bytes, inputs: list[list[np.ndarray]]) -> tuple[list[list[np.ndarray] | None], str]:
    """LiteRT's reference kernels over each input (a list of input tensors), in a child process: the outputs of
    each input (None where LiteRT refused it), and why when it refused or crashed ("" otherwise)."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "model.tflite").write_bytes(tflite)
        np.savez(folder / "inputs.npz", **{f"{i}_{m}": t for i, tensors in enumerate(inputs) for m, t in enumerate(tensors)})
        (folder / "shape.json").write_text(json.dumps([len(inputs), len(inputs[0]) if inputs else 0]))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        try:  # a corrupted heap may hang rather than crash the child
            child = subprocess.run([sys.executable, "-c", _LITERT_CHILD, tmp], capture_output=True, env=env, check=False,
                                   timeout=LITERT_SECONDS + 10 * len(inputs))  # fmt: skip
        except subprocess.TimeoutExpired:
            return [None] * len(inputs), "LiteRT's reference kernels hung on this model"
        if child.returncode != 0:
            how = f"signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
            last = child.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return [None] * len(inputs), f"LiteRT's reference kernels crashed on this model ({how}) {last[0][:200]}".strip()
        errors = {int(i): why for i, why in json.loads((folder / "errors.json").read_text()).items()}
        n_out = len(graph_io(tflite)[1])
        with np.load(folder / "outputs.npz") as z:
            results = [None if i in errors else [z[f"{i}_{j}"] for j in range(n_out)] for i in range(len(inputs))]
    return results, "; ".join(sorted(set(errors.values())))


# The arena search runs in a child process: TFLM's host interpreter can crash (not raise) when an
# arena is too small (its LSTM kernel dereferences a buffer it failed to allocate). The child reports
# each probe before and after it, so a crash counts as "too small" and the search goes on.
_ARENA_SEARCH = """
import os, sys
from tflite_micro.python.tflite_micro import runtime
report = os.fdopen(os.dup(1), "w", buffering=1)
sink = os.open(os.devnull, os.O_WRONLY)
os.dup2(sink, 1)
os.dup2(sink, 2)
model = sys.stdin.buffer.read()
lo, hi, check_hi = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
config = runtime.InterpreterConfig.kPreserveAllTensors if sys.argv[4] == "1" else runtime.InterpreterConfig.kAllocationRecording
def works(size):
    report.write(f"try {size}\\n")
    try:
        runtime.Interpreter.from_bytes(model, arena_size=size, intrepreter_config=config).invoke()
        ok = True
    except (RuntimeError, ValueError):
        ok = False
    report.write(f"{'ok' if ok else 'fail'} {size}\\n")
    return ok
if check_hi and not works(hi):
    sys.exit(3)
while hi - lo > 16:
    mid = (lo + hi) // 2 // 16 * 16
    if works(mid):
        hi = mid
    else:
        lo = mid
"""
ARENA_SEARCH_RESTARTS = 32


def tflm_arena_bytes(tflite: bytes, upper: int = 8 * 1024 * 1024, preserve_all: bool = False) -> int:
    """Smallest arena (to 16 bytes) with which TFLM allocates and invokes the model (``preserve_all``: keeping
    every tensor, as the per-layer capture build does)."""
    lo, hi, hi_checked = 0, upper, False  # lo fails (or is 0), hi works once checked
    for _ in range(ARENA_SEARCH_RESTARTS):
        child = subprocess.run(
            [sys.executable, "-c", _ARENA_SEARCH, str(lo), str(hi), "0" if hi_checked else "1", "1" if preserve_all else "0"],
            input=tflite,
            capture_output=True,
            check=False,
        )
        trying = None
        for line in child.stdout.decode(errors="replace").splitlines():
            word, _, size = line.partition(" ")
            if word == "try":
                trying = int(size)
            elif word in ("ok", "fail"):
                trying = None
                if word == "ok":
                    hi, hi_checked = int(size), True
                else:
                    lo = int(size)
        if child.returncode == 0:
            return hi
        if child.returncode == 3:
            raise RuntimeError(f"TFLM cannot run this model even with a {upper // 1024} KB arena")
        if trying is None:
            raise RuntimeError(f"the TFLM arena search failed: {child.stderr.decode(errors='replace')[-500:]}")
        if not hi_checked:
            raise RuntimeError(
                f"TFLM's host interpreter crashed running this model (exit {child.returncode}) even with a "
                f"{upper // 1024} KB arena: the model cannot be checked against TFLM on the host"
            )
        lo = trying  # it crashed for want of memory: too small
    raise RuntimeError(f"the TFLM arena search crashed {ARENA_SEARCH_RESTARTS} times; giving up")
