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
    from train.embedding_norm import Head
    from train.frontend import FrontEndConfig

METADATA_NAME = "ser_tinyml"  # our entry in the model's metadata table
MODEL_FILE = "model_int8.tflite"  # the deployable model in a run folder
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_DELEGATE_OPS = {"DELEGATE"}


class ModelFileError(Exception):
    """The file is not a model this pipeline can put on a board; the message says why."""


# TfLiteType codes (what TFLM's tensors and the protocol's tensor specs carry; the schema numbers float32 0).
TFLITE_TYPE_CODES = {"float32": 1, "int32": 2, "uint8": 3, "int64": 4, "int16": 7, "int8": 9}
# Tensor types with a NumPy counterpart: the bytes a tensor holds are its elements little-endian, row-major.
NUMPY_TYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "float32": np.float32}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the graph; ``index`` is its position among the graph's inputs (or outputs), or for a
    layer's output its index in the model's tensor table."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "int8", "float32", ...
    scale: float
    zero_point: int
    index: int = 0
    scales: int = 1  # quantization scales: more than one for per-channel weights

    @property
    def numpy_dtype(self) -> np.dtype:
        if self.dtype not in NUMPY_TYPES:
            raise ModelFileError(f"tensor {self.name!r} is {self.dtype}: no NumPy type for it")
        return np.dtype(NUMPY_TYPES[self.dtype]).newbyteorder("<")

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.elements * self.numpy_dtype.itemsize

    def to_bytes(self, values: np.ndarray) -> bytes:
        """The tensor's data as TFLM holds it (what the board's tensor holds)."""
        return np.ascontiguousarray(values, dtype=self.numpy_dtype).reshape(-1).tobytes()

    def from_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=self.numpy_dtype).reshape(self.shape)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
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


def _tensor_spec(model: schema.ModelT, index: int, position: int | None = None) -> TensorSpec:
    """Tensor ``index`` of the tensor table; ``position``: its place among the graph's inputs or outputs."""
    tensor = model.subgraphs[0].tensors[index]
    q = tensor.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or f"tensor_{index}")
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    dtype = _TYPE_NAMES.get(tensor.type, str(tensor.type))
    scales = len(q.scale) if q is not None and q.scale is not None else 0
    return TensorSpec(name, shape, dtype, scale, zero, index if position is None else position, max(1, scales))


def io_specs(tflite: bytes) -> tuple[TensorSpec, TensorSpec]:
    """The single input and single output of the model (the firmware handles exactly one of each)."""
    model = _load(tflite)
    if len(model.subgraphs) != 1:
        raise ModelFileError(f"model has {len(model.subgraphs)} subgraphs; the firmware runs single-subgraph models")
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ModelFileError(f"model has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; expected one of each")
    return _tensor_spec(model, int(graph.inputs[0])), _tensor_spec(model, int(graph.outputs[0]))


def graph_io(tflite: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Every input and output of the graph, in order (``index``: the position); corrupt files raise ModelFileError."""
    model = _load(tflite)
    try:
        graph = model.subgraphs[0]
        inputs = [_tensor_spec(model, int(t), i) for i, t in enumerate(graph.inputs if graph.inputs is not None else ())]
        outputs = [_tensor_spec(model, int(t), i) for i, t in enumerate(graph.outputs if graph.outputs is not None else ())]
    except Exception as exc:  # a flatbuffer that parses but points past its tables
        raise ModelFileError(f"corrupt or truncated TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    return inputs, outputs


def tensor_count(tflite: bytes) -> int:
    """Tensors in the graph's tensor table (what a per-layer capture board reports in INFO LAYERS)."""
    return len(_load(tflite).subgraphs[0].tensors or [])


def operator_inputs(tflite: bytes, op_name: str) -> list[list[TensorSpec | None]]:
    """The input tensors of every operator named ``op_name``, in execution order (None: an optional input left out)."""
    model = _load(tflite)
    names = operator_names(tflite)
    ops = model.subgraphs[0].operators or []
    return [
        [_tensor_spec(model, int(t)) if t >= 0 else None for t in (op.inputs if op.inputs is not None else ())]
        for op, name in zip(ops, names, strict=True)
        if name == op_name
    ]


def resource_variables(tflite: bytes) -> int:
    """Distinct resource variables (VAR_HANDLE shared names) the model keeps across Invokes: TFLM needs a
    MicroResourceVariables of that many slots (as the ``tflite-micro`` host runtime counts them)."""
    model = _load(tflite)
    names = set()
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.VAR_HANDLE:
                names.add(getattr(op.builtinOptions, "sharedName", None))
    return len(names)


@dataclass(frozen=True)
class LayerOutput:
    """One output tensor of one operator, in execution order (``tensor.index``: its index in the tensor table)."""

    op_index: int
    op: str
    tensor: TensorSpec


def layer_outputs(tflite: bytes) -> list[LayerOutput]:
    """The output tensors of every operator, in execution order: what per-layer capture compares."""
    model = _load(tflite)
    names = operator_names(tflite)
    graph = model.subgraphs[0]
    return [
        LayerOutput(i, names[i], _tensor_spec(model, int(t)))
        for i, op in enumerate(graph.operators or [])
        for t in (op.outputs if op.outputs is not None else ())
        if t >= 0
    ]


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


def model_head(tflite: bytes) -> Head | None:
    """The per-speaker embedding classifier (``train.embedding_norm.Head``, in int8 steps) a model ending at its
    embedding carries in its metadata, or None."""
    from train.embedding_norm import Head

    meta = read_metadata(tflite)
    return Head.from_json(meta["embedding_norm"]) if meta and "embedding_norm" in meta else None


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


def _constant_tensors(model: schema.ModelT) -> set[int]:
    """Indices of subgraph 0's tensors that carry data in the file (weights, biases, shapes)."""

    def has_data(buffer) -> bool:  # inline data, or data past the flatbuffer (models over 2 GB)
        return (buffer.data is not None and len(buffer.data) > 0) or bool(buffer.offset and buffer.size)

    buffers = model.buffers or []
    tensors = model.subgraphs[0].tensors or []
    return {i for i, t in enumerate(tensors) if t.buffer and t.buffer < len(buffers) and has_data(buffers[t.buffer])}


def op_tensor_types(tflite: bytes) -> dict[str, set[str]]:
    """Op name -> the types of the tensors its operators read or write at run time (constants left out)."""
    model = _load(tflite)
    types: dict[str, set[str]] = {}
    constant = _constant_tensors(model)
    graph = model.subgraphs[0]
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        seen = types.setdefault(name, set())
        for index in [*(op.inputs if op.inputs is not None else []), *(op.outputs if op.outputs is not None else [])]:
            if index >= 0 and int(index) not in constant:  # not an optional input left out, nor a constant
                seen.add(_TYPE_NAMES.get(graph.tensors[int(index)].type, str(graph.tensors[int(index)].type)))
    return types
