"""Which TFLite ops the firmware can register, and the check that refuses a model using any other."""

from __future__ import annotations

from convert.tflite_file import ModelFileError, op_versions

# Builtin op -> MicroMutableOpResolver method. CMSIS-NN provides the optimized int8 kernels for
# CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MUL, SOFTMAX, AVERAGE/MAX_POOL_2D; the rest
# are TFLM's portable kernels (cheap data movement or element-wise).
FIRMWARE_OPS: dict[str, str] = {
    "ADD": "AddAdd",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "EXPAND_DIMS": "AddExpandDims",
    "FULLY_CONNECTED": "AddFullyConnected",
    "LOGISTIC": "AddLogistic",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MUL": "AddMul",
    "PAD": "AddPad",
    "QUANTIZE": "AddQuantize",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "SOFTMAX": "AddSoftmax",
    "SQUEEZE": "AddSqueeze",
}


class UnsupportedOpError(ModelFileError):
    """The model uses an op the firmware does not register."""


def check_ops(tflite: bytes) -> list[tuple[str, int]]:
    """The model's ops with versions; raises UnsupportedOpError naming every op the firmware lacks."""
    ops = op_versions(tflite)
    missing = [f"{name} (v{version})" for name, version in ops if name not in FIRMWARE_OPS]
    if missing:
        raise UnsupportedOpError(
            f"the firmware cannot run this model: unsupported op(s) {', '.join(missing)}. "
            f"Supported: {', '.join(sorted(FIRMWARE_OPS))}. Rebuild the model from supported layers "
            "or add the op to convert/ops.py and the firmware's TFLM build."
        )
    return ops
