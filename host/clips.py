"""Which clips an evaluation sends, and the exact int16 samples the board receives for each.

The clips come from the run's split manifest, so the board sees exactly the test clips that training
and conversion scored; the samples are cropped or padded on the host by the run's front-end rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.corpus import read_wav
from train.frontend import FrontEndConfig, fit_clip
from train.labels import label_index
from train.splits import clips_with_role, load_manifest


@dataclass(frozen=True)
class EvalClip:
    path: str  # relative to the corpus root, as in the manifest: also the clip's key in results.jsonl
    emotion: str

    @property
    def label(self) -> int:
        return label_index(self.emotion)


def select(run: Path, split: str = "test", limit: int | None = None) -> list[EvalClip]:
    """``split``: ``test`` (the run's test part), ``all`` (every clip of its manifest) or a manifest file's test part.

    ``limit`` keeps N clips spread evenly over the list (which is ordered by speaker and emotion), so a
    short evaluation still covers every class.
    """
    if split in ("test", "all"):
        manifest = load_manifest(run / "manifest.json")
    else:
        path = Path(split)
        if not path.is_file():
            raise FileNotFoundError(f"--split {split}: not 'test', 'all' or a manifest file")
        manifest = load_manifest(path)
    entries = manifest["clips"] if split == "all" else clips_with_role(manifest, "test")
    clips = [EvalClip(c["path"], c["emotion"]) for c in entries]
    if limit is not None and limit < len(clips):
        keep = np.linspace(0, len(clips) - 1, limit).round().astype(int)
        clips = [clips[i] for i in keep]
    return clips


def board_pcm(root: Path, clip: EvalClip, cfg: FrontEndConfig) -> np.ndarray:
    """The ``cfg.clip_samples`` int16 samples sent for ``clip`` (read, checked, cropped or padded)."""
    return fit_clip(read_wav(root / clip.path), cfg)
