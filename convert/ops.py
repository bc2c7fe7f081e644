"""Which TFLite ops the firmware can register, and the check that refuses a model using any other.

The firmware links every built-in kernel of the pinned TFLM (firmware/tflm/CMakeLists.txt), and an
emitted op resolver registers exactly the model's ops. Where every tensor an op reads or writes at
run time is int8, the op gets an int8-only registration (ours, or TFLM's int8 variant: less flash,
no float or int16 paths); otherwise (16x8 quantization, float, int32 edges) TFLM's general kernel.
"""

from __future__ import annotations

from convert.tflite_file import ModelFileError, layer_macs, op_tensor_types, op_versions, operator_inputs, operator_names

# Built-in op -> MicroMutableOpResolver method, for every built-in of the pinned TFLM
# (tensorflow/lite/micro/micro_mutable_op_resolver.h; tests/test_op_resolver.py checks it there).
TFLM_OPS: dict[str, str] = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast",
    "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "COS": "AddCos",
    "CUMSUM": "AddCumSum",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice",
    "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "EQUAL": "AddEqual",
    "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill",
    "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog",
    "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad",
    "MUL": "AddMul",
    "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable",
    "REDUCE_ALL": "AddReduceAll",
    "REDUCE_MAX": "AddReduceMax",
    "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound",
    "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape",
    "SIN": "AddSin",
    "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "SVDF": "AddSvdf",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
}

# Op -> its int8-only registration. ADD, CONV_2D, FULLY_CONNECTED, MEAN and SOFTMAX run our own
# kernels (firmware/kernels/); in the reference-kernel build these all resolve to TFLM's reference
# kernels (kernels/ser_kernels.h). FULLY_CONNECTED: see OWN_FC_SHARE.
INT8_REGISTRATIONS: dict[str, str] = {
    "ADD": "ser::Register_ADD_INT8()",
    "AVERAGE_POOL_2D": "tflite::Register_AVERAGE_POOL_2D_INT8()",
    "CONV_2D": "ser::Register_CONV_2D_INT8()",
    "DEPTHWISE_CONV_2D": "tflite::Register_DEPTHWISE_CONV_2D_INT8()",
    "FULLY_CONNECTED": "ser::Register_FULLY_CONNECTED_INT8()",
    "MAX_POOL_2D": "tflite::Register_MAX_POOL_2D_INT8()",
    "MEAN": "ser::Register_MEAN_INT8()",
    "MUL": "tflite::Register_MUL_INT8()",
    "PAD": "tflite::Register_PAD_INT8()",
    "SOFTMAX": "ser::Register_SOFTMAX_INT8()",
}


# Our FULLY_CONNECTED is a plain loop (about 7 instructions per MAC against CMSIS-NN's 1-2) that saves
# CMSIS-NN's ~10 KB of matrix-vector code. It is registered only where that cannot make the model
# slower than with CMSIS-NN alone: the model's convolutions run our CONV_2D (faster than CMSIS-NN's by
# far more) and its FC layers carry under this share of its MACs (the classifier heads of our models).
# Everywhere else FULLY_CONNECTED is CMSIS-NN's int8 kernel.
OWN_FC_SHARE = 0.001
CMSIS_NN_FC = "tflite::Register_FULLY_CONNECTED_INT8()"


def _own_fc_pays(tflite: bytes) -> bool:
    names, macs = operator_names(tflite), layer_macs(tflite)
    fc = sum(m for n, m in zip(names, macs, strict=True) if n == "FULLY_CONNECTED")
    return "CONV_2D" in names and fc < OWN_FC_SHARE * max(1, sum(macs))


class UnsupportedOpError(ModelFileError):
    """The model uses an op the firmware does not register."""


def check_ops(tflite: bytes) -> list[tuple[str, int]]:
    """The model's ops with versions; raises UnsupportedOpError naming every op the firmware lacks."""
    ops = op_versions(tflite)
    missing = [f"{name} (v{version})" for name, version in ops if name not in TFLM_OPS]
    if missing:
        custom = any(name.startswith("CUSTOM:") for name, _ in ops if name not in TFLM_OPS)
        raise UnsupportedOpError(
            f"the firmware cannot run this model: TFLM has no built-in kernel for {', '.join(missing)}"
            + (" (custom ops are not linked into the firmware)" if custom else "")
            + ". Rebuild the model from TFLM's built-in ops (ser-analyze lists them), or register the "
            "kernel in convert/ops.py and link it into the firmware's TFLM build."
        )
    return ops


def registrations(tflite: bytes) -> list[dict]:
    """Each op of the model: name, version, resolver method and registration ("" = TFLM's general kernel)."""
    types = op_tensor_types(tflite)
    int8 = dict(INT8_REGISTRATIONS)
    if not _own_fc_pays(tflite):
        int8["FULLY_CONNECTED"] = CMSIS_NN_FC
    versions: dict[str, int] = {}  # a model may list one op under several operator codes: registered once
    for name, version in check_ops(tflite):
        versions[name] = max(version, versions.get(name, 0))
    return [
        {
            "name": name,
            "version": version,
            "method": TFLM_OPS[name],
            "registration": int8.get(name, "") if types.get(name) == {"int8"} else "",
        }
        for name, version in versions.items()
    ]


def _align16(n: int) -> int:
    return (n + 15) // 16 * 16


def cmsis_nn_arena_extra(tflite: bytes) -> int:
    """Arena bytes CMSIS-NN's kernels take on the board beyond what host TFLM (reference kernels) measures.

    CMSIS-NN's UNIDIRECTIONAL_SEQUENCE_LSTM keeps eight precomputed bias sums per cell (int32 for int8
    activations, int64 for int16) as persistent buffers (kernels/cmsis_nn/unidirectional_sequence_lstm.cc);
    the reference kernel does not, and an arena without them makes the kernel write through a null pointer."""
    extra = 0
    for inputs in operator_inputs(tflite, "UNIDIRECTIONAL_SEQUENCE_LSTM"):
        forget_weights = inputs[2]  # input_to_forget_weights: (n_cell, n_input)
        if forget_weights is None or not forget_weights.shape:
            continue
        bias_bytes = 8 if inputs[0] is not None and inputs[0].dtype == "int16" else 4
        extra += 8 * _align16(forget_weights.shape[0] * bias_bytes)
    return extra


def cmsis_nn_refusals(tflite: bytes) -> list[str]:
    """Operators that TFLM's CMSIS-NN kernels refuse although TFLM's reference kernels run them, each with why.

    The firmware's default build links CMSIS-NN's kernel in place of the reference one for these ops, so
    such a model needs the reference-kernel build (SER_CMSIS_NN=OFF)."""
    refusals = []
    for i, inputs in enumerate(operator_inputs(tflite, "FULLY_CONNECTED")):
        data, weights = inputs[0], inputs[1]
        if data is not None and weights is not None and data.dtype == "int16" and weights.scales > 1:
            refusals.append(f"FULLY_CONNECTED #{i} (int16 input, per-channel int8 weights): CMSIS-NN's kernel takes "
                            "per-channel weights with int8 inputs only")  # fmt: skip
    return refusals
