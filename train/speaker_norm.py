"""Per-speaker normalisation of the log-mel: each voice standardised by statistics of its own unlabelled audio.

Why: under leave-one-speaker-out the model meets a voice it never heard, and one global mean/std
(``train.fit.standardise``) leaves that voice's level and timbre in every input. Standardising each
speaker's log-mel by that speaker's own statistics removes the part of the voice that is a constant
offset (scalar) or a constant spectral tilt (per mel bin), and needs no label: on a board it is an
enrolment or a running estimate of the user's feature statistics.

The statistics are the mean and standard deviation over every frame (and, ``scalar``, every mel bin)
of the unstandardised log-mel that the board's C front end computes (``FrontEndConfig.raw``).
``scalar`` keeps 2 float32 (8 bytes); ``bins`` keeps 2 per mel bin (512 bytes for 64 bins). A
running estimate needs the frame count and the sums of the values and of their squares: the board's
C code (``firmware/app/ser_speaker_norm.c``) keeps them exactly (int64 sums of values rounded to
2^-12, 16 bytes per bin) and ``Running`` is that same code, so a model trained here meets the same
statistics on the board.

Honest use on a test speaker (``scoring_plan``): the speaker's clips are put in a fixed order drawn
from a seed and the clip count alone (never from a label or a path); clip i is then scored with
statistics of clips that are not clip i and carry no label:

- ``causal``: a running estimate over the clips before i in that order (clip 0: the training
  part's pooled statistics, which hold no test audio);
- ``enrolment K``: the first K clips of the order; those K are never scored. The curve over K is
  scored on one fixed set (the clips after the largest K), so its points compare;
- ``known-voice``: a voice the model was trained on (10-fold, the paper's split) is scored with the
  statistics of its clips in the training part, a disjoint enrolment set: what a board that knows
  its user loads with ``NORM``, and what ``speaker_features`` gives a training speaker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from train.frontend import FrontEndConfig
    from train.frontend_c import SumsState

Mode = Literal["scalar", "bins"]
MODES: tuple[str, ...] = ("scalar", "bins")
ENROLMENT_COUNTS: tuple[int, ...] = (1, 5, 20, 50)  # the enrolment curve's clip counts
ORDER_SEED = 19  # the fixed order of a test speaker's clips


@dataclass(frozen=True)
class Stats:
    """Mean and std of the log-mel: shape () for ``scalar``, (n_mels,) for ``bins``; float32."""

    mean: np.ndarray
    std: np.ndarray

    def to_json(self) -> dict[str, list[float] | float]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


class Running:
    """A speaker's running sums of log-mel values and ``stats()`` at any time: the board's own C arithmetic
    (``train.frontend_c.SpeakerSums``), so training, the host's reference and the board agree bit for bit."""

    def __init__(self, mode: Mode, n_mels: int) -> None:
        from train.frontend_c import SpeakerSums

        if mode not in MODES:
            raise ValueError(f"speaker normalisation is one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.sums = SpeakerSums(mode, n_mels)
        self._clip = SpeakerSums(mode, n_mels)

    @property
    def count(self) -> int:
        """Frames summed."""
        return self.sums.frames

    def add(self, raw: np.ndarray) -> None:
        """One clip's unstandardised model input, (n_mels, frames, 1) or (n_mels, frames): summed on its own,
        then committed as one more clip, as the board does (so ``state`` is what a board would hold)."""
        self._clip.clear()
        self._clip.add_clip(raw)
        if not self.sums.commit(self._clip):
            raise ValueError(f"more audio than a board's sums can keep (they hold {self.sums.frames} frames already)")

    def state(self) -> SumsState:
        """The sums as a board's NORM command loads them (PROTOCOL.md 14)."""
        return self.sums.state()

    def stats(self) -> Stats:
        if self.count == 0:
            raise ValueError("no audio seen yet: statistics need at least one clip")
        mean, std = self.sums.stats()
        if self.mode == "scalar":
            return Stats(mean[:1].reshape(()), std[:1].reshape(()))
        return Stats(mean, std)


def apply(raw: np.ndarray, stats: Stats) -> np.ndarray:
    """``(v - mean) / std`` in float32 (a subtraction, then a division, as the board's front end does)."""
    raw = np.asarray(raw, dtype=np.float32)
    shape = (-1,) + (1,) * (raw.ndim - 1)
    return (raw - stats.mean.reshape(shape)) / stats.std.reshape(shape)


def summed(raws: Sequence[np.ndarray], mode: Mode) -> Running:
    """The running sums over all these clips."""
    run = Running(mode, raws[0].shape[0])
    for raw in raws:
        run.add(raw)
    return run


def pooled(raws: Sequence[np.ndarray], mode: Mode) -> Stats:
    """Statistics of all these clips together."""
    return summed(raws, mode).stats()


def by_speaker(speakers: Sequence[str], raws: Sequence[np.ndarray], mode: Mode) -> dict[str, Running]:
    """Each speaker's sums over that speaker's clips among these (training: the training part)."""
    return {s: summed([r for r, t in zip(raws, speakers, strict=True) if t == s], mode) for s in sorted(set(speakers))}


def scoring_order(count: int) -> np.ndarray:
    """The fixed order of a test speaker's ``count`` clips: a permutation drawn from a constant seed."""
    return np.random.default_rng(ORDER_SEED).permutation(count)


def causal(raws: Sequence[np.ndarray], mode: Mode, prior: Stats) -> list[Stats]:
    """Statistics for scoring clip i (in the given order): the running estimate over clips 0..i-1; clip 0 gets ``prior``."""
    run = Running(mode, raws[0].shape[0])
    out = []
    for raw in raws:
        out.append(run.stats() if run.count else prior)
        run.add(raw)
    return out


@dataclass(frozen=True)
class Protocol:
    """One way of scoring a test speaker: which clips are scored and the statistics each is scored with."""

    name: str
    scored: np.ndarray  # clip indices (into the speaker's clips as given)
    stats: list[Stats]  # one per scored clip
    enrolled: np.ndarray  # clip indices whose audio made the statistics (beside earlier scored ones for causal)


def scoring_plan(
    raws: Sequence[np.ndarray],
    mode: Mode,
    prior: Stats,
    counts: Sequence[int] = ENROLMENT_COUNTS,
    known: Stats | None = None,
) -> list[Protocol]:
    """Every scoring of one test speaker's clips: ``causal`` over all, ``training-stats`` and ``enrol-K`` on one fixed set.

    Takes audio only: no label, no path. ``training-stats`` (K = 0) scores with ``prior`` (the
    training part's pooled statistics): the enrolment curve's starting point. ``known`` is the
    speaker's own statistics from the training part, when the model was trained on this voice: then
    ``known-voice`` scores every clip with them. ``all-clips`` scores every clip with statistics of
    all the speaker's clips, itself and later ones included: not an honest figure, only the ceiling
    that the honest ones approach.
    """
    order = scoring_order(len(raws))
    counts = [k for k in counts if 0 < k < len(raws)]  # a count must leave clips to score
    kmax = max(counts, default=0)
    in_order = [raws[i] for i in order]
    plans = [Protocol("causal", order, causal(in_order, mode, prior), np.array([], dtype=int))]
    fixed = order[kmax:]
    plans.append(Protocol("training-stats", fixed, [prior] * len(fixed), np.array([], dtype=int)))
    for k in counts:
        enrolled = order[:k]
        stats = pooled([raws[i] for i in enrolled], mode)
        plans.append(Protocol(f"enrol-{k}", fixed, [stats] * len(fixed), enrolled))
    if known is not None:
        plans.append(Protocol("known-voice", order, [known] * len(order), np.array([], dtype=int)))
    everything = pooled(raws, mode)
    plans.append(Protocol("all-clips", order, [everything] * len(order), order))
    return plans


def prior_of(cfg: FrontEndConfig) -> Stats:
    """The prior a front end carries (``FrontEndConfig.prior_mean/prior_std``), as ``Stats``."""
    mean, std = np.array(cfg.prior_mean, np.float32), np.array(cfg.prior_std, np.float32)
    return Stats(mean.reshape(()), std.reshape(())) if cfg.speaker_norm == "scalar" else Stats(mean, std)


SPEAKER_NORM_FILE = "speaker_norm.json"  # in a run folder: the mode, the prior, each training voice


def save_speaker_norm(path: Path, mode: Mode, prior: Stats, voices: dict[str, Running]) -> None:
    """A run's per-speaker normalisation: the prior (``training_part``) and each training voice's statistics,
    with the exact sums they came from, so a board can be loaded with a known voice (``NORM``) without
    running the front end over that voice's clips again."""
    speakers = {}
    for s, voice in voices.items():
        state = voice.state()
        sums = {"clips": state.clips, "frames": state.frames, "sum": list(state.sum), "squares": list(state.squares)}
        speakers[s] = voice.stats().to_json() | {"sums": sums}
    data = {"mode": mode, "training_part": prior.to_json(), "speakers": speakers}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def load_speaker_stats(path: Path) -> dict[str, Stats]:
    """Each training speaker's statistics as training used them (a run's ``speaker_norm.json``)."""
    data = json.loads(Path(path).read_text())
    shape = () if data["mode"] == "scalar" else (-1,)
    return {
        s: Stats(np.asarray(v["mean"], np.float32).reshape(shape), np.asarray(v["std"], np.float32).reshape(shape))
        for s, v in data["speakers"].items()
    }


def load_speaker_sums(path: Path) -> dict[str, SumsState | None]:
    """Each training speaker's exact sums (``save_speaker_norm``); None for a voice of a run saved before
    they were kept, whose sums must be rebuilt from its training clips."""
    from train.frontend_c import SumsState

    data = json.loads(Path(path).read_text())
    out: dict[str, SumsState | None] = {}
    for s, v in data["speakers"].items():
        sums = v.get("sums")
        if sums is None:
            out[s] = None
            continue
        out[s] = SumsState(data["mode"], int(sums["clips"]), int(sums["frames"]), tuple(sums["sum"]), tuple(sums["squares"]))
    return out


def speaker_features(
    speakers: Sequence[str], raws: Sequence[np.ndarray], cfg: FrontEndConfig, known: dict[str, Stats]
) -> list[np.ndarray]:
    """Model inputs of clips (in the given order) as a speaker-normalised model meets them.

    A speaker in ``known`` (a training speaker) gets its statistics; any other voice gets the board's
    causal statistics: its clips in ``scoring_order`` of their order here, each standardised by the
    clips before it, the first by the prior (``SpeakerStream`` on the board, ``causal`` here).
    """
    out: list[np.ndarray | None] = [None] * len(raws)
    for speaker in dict.fromkeys(speakers):
        mine = [i for i, s in enumerate(speakers) if s == speaker]
        if speaker in known:
            for i in mine:
                out[i] = apply(raws[i], known[speaker])
            continue
        order = [mine[j] for j in scoring_order(len(mine))]
        for i, stats in zip(order, causal([raws[i] for i in order], cfg.speaker_norm, prior_of(cfg)), strict=True):
            out[i] = apply(raws[i], stats)
    return out  # type: ignore[return-value]


def run_model_inputs(run: Path, cfg: FrontEndConfig, pcms: Sequence[np.ndarray], speakers: Sequence[str]) -> list[np.ndarray]:
    """Float model inputs of a run's clips (as stored on disk): the front end alone, or, for a
    speaker-normalised run, ``speaker_features`` with the training speakers' statistics of its
    ``speaker_norm.json``."""
    from train.frontend import clip_features

    if cfg.speaker_norm == "off":
        return [clip_features(p, cfg) for p in pcms]
    raws = [clip_features(p, cfg.raw) for p in pcms]
    return speaker_features(speakers, raws, cfg, load_speaker_stats(Path(run) / SPEAKER_NORM_FILE))
