"""Which TFLite ops the firmware can register, and the check that refuses a model using any other."""

from __future__ import annotations

from convert.tflite_file import ModelFileError, op_versions

# Builtin op -> (MicroMutableOpResolver method, kernel registration or "" for the method's default).
# The firmware's ops are int8, so where TFLM has an int8-only kernel variant it is registered
# (less flash: no float/int16 paths); ADD, CONV_2D, FULLY_CONNECTED, MEAN and SOFTMAX run our own
# (firmware/kernels/).
# In the reference-kernel build all of these resolve to TFLM's reference kernels.
FIRMWARE_OPS: dict[str, tuple[str, str]] = {
    "ADD": ("AddAdd", "ser::Register_ADD_INT8()"),
    "AVERAGE_POOL_2D": ("AddAveragePool2D", "tflite::Register_AVERAGE_POOL_2D_INT8()"),
    "CONCATENATION": ("AddConcatenation", ""),
    "CONV_2D": ("AddConv2D", "ser::Register_CONV_2D_INT8()"),
    "DEPTHWISE_CONV_2D": ("AddDepthwiseConv2D", "tflite::Register_DEPTHWISE_CONV_2D_INT8()"),
    "DEQUANTIZE": ("AddDequantize", ""),
    "EXPAND_DIMS": ("AddExpandDims", ""),
    "FULLY_CONNECTED": ("AddFullyConnected", "ser::Register_FULLY_CONNECTED_INT8()"),
    "LOGISTIC": ("AddLogistic", ""),
    "MAX_POOL_2D": ("AddMaxPool2D", "tflite::Register_MAX_POOL_2D_INT8()"),
    "MEAN": ("AddMean", "ser::Register_MEAN_INT8()"),
    "MUL": ("AddMul", "tflite::Register_MUL_INT8()"),
    "PAD": ("AddPad", "tflite::Register_PAD_INT8()"),
    "QUANTIZE": ("AddQuantize", ""),
    "RELU": ("AddRelu", ""),
    "RELU6": ("AddRelu6", ""),
    "RESHAPE": ("AddReshape", ""),
    "SOFTMAX": ("AddSoftmax", "ser::Register_SOFTMAX_INT8()"),
    "SQUEEZE": ("AddSqueeze", ""),
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
