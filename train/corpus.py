"""Find and read the CASIA corpus, refusing anything that would silently skew training.

Layout: ``<root>/<speaker>/<emotion>/<sentence>.wav``, 16 kHz mono 16-bit PCM.
Every error names the file (or folder) and says what is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.labels import EMOTIONS

SAMPLE_RATE = 16000
SPEAKERS: tuple[str, ...] = ("ZhaoZuoxiang", "liuchanhg", "wangzhe", "zhaoquanyin")
ROOT_ENV = "CASIA_ROOT"


class CorpusError(Exception):
    """The corpus on disk is not what the pipeline needs; the message says what to fix."""


@dataclass(frozen=True)
class Clip:
    """One utterance; ``path`` is relative to the corpus root so manifests move between machines."""

    path: str
    speaker: str
    emotion: str
    sentence: str

    @classmethod
    def from_manifest(cls, entry: dict) -> Clip:
        """The clip of a split manifest's entry (which adds its role)."""
        return cls(entry["path"], entry["speaker"], entry["emotion"], entry["sentence"])


def resolve_root(flag: str | os.PathLike[str] | None = None) -> Path:
    """The corpus root from ``--data`` or ``$CASIA_ROOT``; never a built-in path."""
    value = flag if flag is not None else os.environ.get(ROOT_ENV)
    if not value:
        raise CorpusError(f"no corpus given: pass --data <casia folder> or set {ROOT_ENV}")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist (from --data or {ROOT_ENV})")
    return root


def read_wav(path: str | os.PathLike[str], expect_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of a 16-bit mono PCM WAV as int16; raises CorpusError naming the file otherwise."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(frames)
    except FileNotFoundError:
        raise CorpusError(f"{path}: file not found") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise CorpusError(f"{path}: not a readable PCM WAV file ({exc})") from None
    if channels != 1:
        raise CorpusError(f"{path}: {channels} channels, expected mono (convert with: sox in.wav -c 1 out.wav)")
    if width != 2:
        raise CorpusError(f"{path}: {8 * width}-bit samples, expected 16-bit PCM")
    if rate != expect_rate:
        raise CorpusError(f"{path}: sample rate {rate} Hz, expected {expect_rate} Hz (resample it first)")
    if len(data) != frames * width:
        raise CorpusError(f"{path}: truncated, header says {frames} samples but the file holds {len(data) // width}")
    if frames == 0:
        raise CorpusError(f"{path}: no samples")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def discover(root: Path, speakers: tuple[str, ...] = SPEAKERS) -> list[Clip]:
    """All clips under ``root`` in a fixed order, after checking the folder structure."""
    found_speakers = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = sorted(set(speakers) - set(found_speakers))
    extra = sorted(set(found_speakers) - set(speakers))
    if missing:
        raise CorpusError(f"{root}: missing speaker folder(s) {', '.join(missing)}")
    if extra:
        raise CorpusError(f"{root}: unexpected folder(s) {', '.join(extra)}; expected only {', '.join(speakers)}")
    clips: list[Clip] = []
    for speaker in sorted(speakers):
        spk_dir = root / speaker
        found_emotions = {p.name for p in spk_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if set(EMOTIONS) - found_emotions:
            raise CorpusError(f"{spk_dir}: missing emotion folder(s) {', '.join(sorted(set(EMOTIONS) - found_emotions))}")
        if found_emotions - set(EMOTIONS):
            raise CorpusError(
                f"{spk_dir}: unexpected folder(s) {', '.join(sorted(found_emotions - set(EMOTIONS)))}; "
                f"expected only {', '.join(EMOTIONS)}"
            )
        for emotion in EMOTIONS:
            wavs = sorted((spk_dir / emotion).glob("*.wav"), key=lambda p: p.name)
            if not wavs:
                raise CorpusError(f"{spk_dir / emotion}: no .wav files")
            for wav in wavs:
                clips.append(Clip(wav.relative_to(root).as_posix(), speaker, emotion, wav.stem))
    return clips


def verify_checksums(root: Path) -> int:
    """Check every file listed in ``SHA256SUMS`` (when present); returns how many were checked."""
    sums = root / "SHA256SUMS"
    if not sums.exists():
        return 0
    checked = 0
    for line_no, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if not name:
            raise CorpusError(f"{sums}:{line_no}: not a 'sha256  path' line")
        target = root / name.strip()
        if not target.exists():
            raise CorpusError(f"{target}: listed in SHA256SUMS but missing")
        actual = hashlib.sha256(target.read_bytes()).hexdigest()
        if actual != digest.strip().lower():
            raise CorpusError(f"{target}: SHA-256 mismatch (corrupt or modified copy; restore it from the original corpus)")
        checked += 1
    return checked


def load_corpus(root: Path, clips: list[Clip]) -> list[np.ndarray]:
    """Read every clip (int16), validating each one."""
    return [read_wav(root / clip.path) for clip in clips]
