"""Read and edit a ``.tflite`` flatbuffer: ops with versions, I/O quantization, our metadata, alignment.

Parsing uses the TFLite schema bindings that ship with ``tflite-micro``, so what we read is what
TFLM reads. Alignment uses TFLM's own ``tflite_flatbuffer_align`` (C++ re-serialization with
16-byte buffer alignment, which CMSIS-NN kernels and the board's ``alignas(16)`` array expect).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

if TYPE_CHECKING:
    from train.frontend import FrontEndConfig

METADATA_NAME = "ser_tinyml"  # our entry in the model's metadata table
MODEL_FILE = "model_int8.tflite"  # the deployable model in a run folder
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_DELEGATE_OPS = {"DELEGATE"}


class ModelFileError(Exception):
    """The file is not a model this pipeline can put on a board; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


def _load(tflite: bytes) -> schema.ModelT:
    if len(tflite) < 8 or tflite[4:8] != b"TFL3":
        raise ModelFileError("not a TFLite flatbuffer (missing the 'TFL3' identifier)")
    try:
        return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    except Exception as exc:  # corrupt flatbuffers raise anything from struct.error to IndexError
        raise ModelFileError(f"corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def sha256(tflite: bytes) -> str:
    return hashlib.sha256(tflite).hexdigest()


def op_versions(tflite: bytes) -> list[tuple[str, int]]:
    """(builtin op name, version) of every operator code the graph uses, in first-use order.

    Delegate placeholders are skipped; custom ops appear as ``CUSTOM:<name>``.
    """
    model = _load(tflite)
    used = []
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            if op.opcodeIndex not in used:
                used.append(op.opcodeIndex)
    result = []
    for index in used:
        code = model.operatorCodes[index]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            name = f"CUSTOM:{custom}"
        if name in _DELEGATE_OPS:
            continue
        result.append((name, int(code.version)))
    return result


def _tensor_spec(model: schema.ModelT, index: int) -> TensorSpec:
    tensor = model.subgraphs[0].tensors[index]
    q = tensor.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    return TensorSpec(name, tuple(int(d) for d in tensor.shape), _TYPE_NAMES.get(tensor.type, str(tensor.type)), scale, zero)


def io_specs(tflite: bytes) -> tuple[TensorSpec, TensorSpec]:
    """The single input and single output of the model (the firmware handles exactly one of each)."""
    model = _load(tflite)
    if len(model.subgraphs) != 1:
        raise ModelFileError(f"model has {len(model.subgraphs)} subgraphs; the firmware runs single-subgraph models")
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ModelFileError(f"model has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; expected one of each")
    return _tensor_spec(model, int(graph.inputs[0])), _tensor_spec(model, int(graph.outputs[0]))


def stored_tensors(tflite: bytes) -> list[TensorSpec]:
    """The graph input and every operator's output, in execution order: the tensors the int8 model stores."""
    model = _load(tflite)
    graph = model.subgraphs[0]
    indices = [int(i) for i in graph.inputs] + [int(op.outputs[0]) for op in graph.operators or []]
    return [_tensor_spec(model, i) for i in indices]


def read_metadata(tflite: bytes, name: str = METADATA_NAME) -> dict | None:
    """Our JSON metadata entry, or None for a model that has none (a foreign model)."""
    model = _load(tflite)
    for entry in model.metadata or []:
        entry_name = entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
        if entry_name == name:
            return json.loads(bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8)).decode())
    return None


def model_labels(tflite: bytes, outputs: int, given: list[str] | None = None) -> list[str]:
    """The output's labels: given ones (``--labels``), else our metadata's, else ``class_0 .. class_N-1``.

    A foreign model never gets the CASIA emotions: they would be wrong for it, and for any other count."""
    meta = read_metadata(tflite)
    labels = given if given is not None else meta["labels"] if meta else [f"class_{i}" for i in range(outputs)]
    source = "the labels file" if given is not None else "the model's metadata"
    if len(labels) != outputs:
        raise ValueError(f"model has {outputs} outputs but {source} names {len(labels)} labels: give one label per output")
    bad = [label for label in labels if not label or any(c in label for c in '"\\\n') or not label.isprintable()]
    if bad:
        raise ValueError(f"labels must be printable text without quotes or backslashes: {bad[:3]}")
    return labels


def model_frontend(tflite: bytes) -> FrontEndConfig | None:
    """The front end (``FrontEndConfig``) a model carries in its metadata, or None for a foreign model."""
    from train.frontend import FrontEndConfig

    meta = read_metadata(tflite)
    return FrontEndConfig(**meta["frontend"]) if meta and "frontend" in meta else None


def with_metadata(tflite: bytes, payload: dict, name: str = METADATA_NAME) -> bytes:
    """A copy of the model carrying ``payload`` as JSON in its metadata table, 16-byte aligned."""
    model = _load(tflite)
    data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    model.metadata = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name) != name]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(tflite) + len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return align(bytes(builder.Output()))


def align(tflite: bytes) -> bytes:
    """Re-serialize with TFLM's aligner so every buffer starts on a 16-byte boundary."""
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper as aligner

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.tflite", Path(tmp) / "out.tflite"
        src.write_bytes(tflite)
        aligner.align_tflite_model(str(src), str(dst))
        return dst.read_bytes()


def buffers_aligned(tflite: bytes, alignment: int = 16) -> bool:
    """True when every non-empty constant buffer starts at a multiple of ``alignment`` in the file."""
    root = schema.Model.GetRootAsModel(tflite, 0)
    for i in range(root.BuffersLength()):
        buf = root.Buffers(i)
        if buf.DataLength() == 0:
            continue
        start = buf._tab.Vector(buf._tab.Offset(4))
        if start % alignment:
            return False
    return True


def operator_names(tflite: bytes) -> list[str]:
    """Builtin op name of every operator in execution order (the tags of the board's per-layer profile)."""
    model = _load(tflite)
    codes = model.operatorCodes
    return [
        _OP_NAMES.get(max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode), "?")
        for op in model.subgraphs[0].operators or []
    ]


# Ops whose multiply-accumulates layer_macs counts; every other op counts 0.
MAC_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "SVDF", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BATCH_MATMUL"}
)


def _op_macs(name: str, graph, op) -> int:
    """Multiply-accumulates of one operator, from its weight and output shapes."""
    shape = lambda i: [int(d) for d in graph.tensors[int(i)].shape]  # noqa: E731
    out = int(np.prod(shape(op.outputs[0])))
    if name == "CONV_2D":  # weights (out_ch, kh, kw, in_ch / groups)
        w = shape(op.inputs[1])
        return out * w[1] * w[2] * w[3]
    if name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, out_ch)
        w = shape(op.inputs[1])
        return out * w[1] * w[2]
    if name == "FULLY_CONNECTED":  # weights (units, inputs)
        return out * shape(op.inputs[1])[-1]
    if name == "TRANSPOSE_CONV":  # inputs: output shape, weights (out_ch, kh, kw, in_ch), input
        w = shape(op.inputs[1])
        return int(np.prod(shape(op.inputs[2]))) * w[0] * w[1] * w[2]
    if name == "SVDF":  # input (batch, n_in), feature weights (filters, n_in), time weights (filters, memory)
        batch = shape(op.inputs[0])[0]
        return batch * (int(np.prod(shape(op.inputs[1]))) + int(np.prod(shape(op.inputs[2]))))
    if name == "UNIDIRECTIONAL_SEQUENCE_LSTM":  # input (batch, time, n_in) or (time, batch, n_in); weights 1-8
        steps = int(np.prod(shape(op.inputs[0])[:-1]))
        gates = [i for i in op.inputs[1:9] if i >= 0]
        return steps * sum(int(np.prod(shape(i))) for i in gates)
    if name == "BATCH_MATMUL":  # (..., n, k) x (..., k, m) -> (..., n, m)
        return out * shape(op.inputs[0])[-1]
    return 0


def layer_macs(tflite: bytes) -> list[int]:
    """Multiply-accumulates of each operator in execution order (0 for ops outside MAC_OPS)."""
    model = _load(tflite)
    graph = model.subgraphs[0]
    macs = []
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        macs.append(_op_macs(name, graph, op) if name in MAC_OPS else 0)
    return macs


def count_macs(tflite: bytes) -> int:
    """Multiply-accumulates of one inference."""
    return sum(layer_macs(tflite))


def op_tensor_types(tflite: bytes) -> dict[str, set[str]]:
    """Op name -> the types of the tensors its operators read or write at run time (constants left out)."""
    model = _load(tflite)
    types: dict[str, set[str]] = {}
    for subgraph in model.subgraphs or []:
        tensors = subgraph.tensors or []
        for op in subgraph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            seen = types.setdefault(name, set())
            for index in [*(op.inputs if op.inputs is not None else []), *(op.outputs if op.outputs is not None else [])]:
                if index < 0:
                    continue  # an optional input left out
                tensor = tensors[int(index)]
                buffer = model.buffers[tensor.buffer] if model.buffers and tensor.buffer < len(model.buffers) else None
                if buffer is not None and buffer.data is not None and len(buffer.data) > 0:
                    continue  # weights and other constants
                seen.add(_TYPE_NAMES.get(tensor.type, str(tensor.type)))
    return types
