"""The six CASIA emotions, in the order every stage (model output, C header, host) uses."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "fear", "happy", "neutral", "sad", "surprise")
NUM_CLASSES = len(EMOTIONS)


def label_index(emotion: str) -> int:
    """Class index of an emotion name; a clear error for names outside the corpus."""
    try:
        return EMOTIONS.index(emotion)
    except ValueError:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}") from None
