"""A model's input and output tensors as the raw tensor path sees them (PROTOCOL.md 12): dtype, shape, bytes.

Read from the flatbuffer with the schema bindings of ``tflite-micro`` (what TFLM reads); the tensor bytes
are the tensor's data in TFLM's layout (row-major, little-endian), so the board and the host exchange
exactly what each interpreter holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from convert.tflite_file import ModelFileError

_TYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
NUMPY = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "float32": np.float32}


@dataclass(frozen=True)
class EdgeTensor:
    """One graph input or output."""

    index: int  # position among the graph's inputs (or outputs)
    name: str
    dtype: str  # "int8", "float32", ...
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def numpy_dtype(self) -> np.dtype:
        if self.dtype not in NUMPY:
            raise ModelFileError(f"tensor {self.name!r} is {self.dtype}: no raw tensor path for that type")
        return np.dtype(NUMPY[self.dtype]).newbyteorder("<")

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.elements * self.numpy_dtype.itemsize

    def to_bytes(self, values: np.ndarray) -> bytes:
        return np.ascontiguousarray(values, dtype=self.numpy_dtype).reshape(-1).tobytes()

    def from_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=self.numpy_dtype).reshape(self.shape)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


def edge_tensors(tflite: bytes) -> tuple[list[EdgeTensor], list[EdgeTensor]]:
    """The graph's inputs and outputs, in order."""
    if len(tflite) < 8 or tflite[4:8] != b"TFL3":
        raise ModelFileError("not a TFLite flatbuffer (missing the 'TFL3' identifier)")
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
        graph = model.subgraphs[0]

        def spec(position: int, tensor_index: int) -> EdgeTensor:
            t = graph.tensors[int(tensor_index)]
            q = t.quantization
            scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
            zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
            return EdgeTensor(position, name, _TYPES.get(t.type, str(t.type)), shape, scale, zero)

        inputs = [spec(i, t) for i, t in enumerate(graph.inputs if graph.inputs is not None else ())]
        outputs = [spec(i, t) for i, t in enumerate(graph.outputs if graph.outputs is not None else ())]
    except ModelFileError:
        raise
    except Exception as exc:  # corrupt flatbuffers raise anything from struct.error to IndexError
        raise ModelFileError(f"corrupt or truncated TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    return inputs, outputs


class HostTflm:
    """TFLM's own interpreter on the host (the ``tflite-micro`` package) over every input and output:
    the bit-exact reference the board must reproduce."""

    def __init__(self, tflite: bytes, arena_size: int | None = None) -> None:
        from tflite_micro.python.tflite_micro import runtime

        from convert.interpreters import quiet_fds

        self.inputs, self.outputs = edge_tensors(tflite)
        with quiet_fds():
            self._interp = runtime.Interpreter.from_bytes(tflite, arena_size=arena_size)

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._interp.reset()
        for spec, values in zip(self.inputs, inputs, strict=True):
            self._interp.set_input(np.asarray(values, dtype=spec.numpy_dtype).reshape(spec.shape), spec.index)
        self._interp.invoke()
        return [np.array(self._interp.get_output(spec.index)).reshape(spec.shape) for spec in self.outputs]


class HostLiteRt:
    """LiteRT (``ai-edge-litert``) with its reference kernels over every input and output: a second opinion
    beside TFLM (TFLM's kernels derive from them, so they agree unless one of the two has a bug)."""

    def __init__(self, tflite: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from convert.interpreters import quiet_fds

        self.inputs, self.outputs = edge_tensors(tflite)
        with quiet_fds():
            self._interp = Interpreter(model_content=tflite, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
            self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for detail, spec, values in zip(self._in, self.inputs, inputs, strict=True):
            self._interp.set_tensor(detail["index"], np.asarray(values, dtype=spec.numpy_dtype).reshape(detail["shape"]))
        self._interp.invoke()
        return [
            np.array(self._interp.get_tensor(d["index"])).reshape(spec.shape)
            for d, spec in zip(self._out, self.outputs, strict=True)
        ]
