"""TensorFlow's own output, set before TensorFlow is imported (it reads the environment once, at import).

Its C++ logging writes straight to file descriptor 2, past Python's logging: INFO lines on every
import, and with deterministic ops an ERROR line per tf.data pipeline ("NodeDef mentions attribute
use_unbounded_threadpool", a mismatch inside TensorFlow itself) although nothing is wrong. A failure
that matters raises a Python exception with its message, so only FATAL lines are let through.
``TF_CPP_MIN_LOG_LEVEL=0`` in the environment shows everything again.
"""

from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
