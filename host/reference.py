"""What the board must answer for a clip: the project's front end and TFLM's own interpreter on the host.

The board runs the same C front end and the same TFLM kernels' arithmetic, so its int8 scores should
equal these bit for bit; the evaluation scores the board against this reference clip by clip.
"""

from __future__ import annotations

import numpy as np

from convert.interpreters import TflmRunner
from convert.tflite_file import ModelFileError, io_specs, model_frontend, read_metadata
from train.frontend import FrontEndConfig, model_input_int8


def audio_frontend(tflite: bytes) -> FrontEndConfig:
    """The front end a model carries in its metadata; a model without one cannot be fed audio."""
    cfg = model_frontend(tflite)
    if cfg is None:
        raise ModelFileError(
            "the model carries no front-end metadata, so it cannot be fed CASIA audio; "
            "convert it with ser-convert (which embeds the run's frontend.json)"
        )
    return cfg


def model_labels(tflite: bytes) -> tuple[str, ...]:
    meta = read_metadata(tflite) or {}
    return tuple(meta.get("labels", ()))


class HostReference:
    """int8 scores of one clip's board PCM, as the board should compute them. Not thread-safe: one per thread."""

    def __init__(self, tflite: bytes) -> None:
        self.cfg = audio_frontend(tflite)
        self.input_spec, self.output_spec = io_specs(tflite)
        self._tflm = TflmRunner(tflite)

    def model_input(self, pcm: np.ndarray) -> np.ndarray:
        return model_input_int8(pcm, self.cfg, self.input_spec.scale, self.input_spec.zero_point)

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        return self._tflm(self.model_input(pcm)).astype(np.int8)
