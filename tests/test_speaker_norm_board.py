"""Per-speaker normalisation on the board: the board's running statistics and the host's agree bit for bit.

The board standardises each clip by the statistics of the clips it heard before (PROTOCOL.md 14);
the host's reference (``HostReference``) keeps the same statistics with the same C code. Every test
streams clips to a real board (the simulated one, and the emulated Cortex-M4 when TFLM sources are
given) through ``BoardSession``, as ser-eval does, and compares scores and statistics with the host.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert.tflite_file import MODEL_FILE
from host import eval_on_device
from host.board import BoardError
from host.eval_report import RESULTS, RUN_INFO, read_results
from host.fault_relay import ByteFaults, FaultPlan, FaultRelay
from host.protocol import Norm, NormState
from host.reference import HostReference
from host.session import BoardSession
from tests.boards_under_test import CFG, KINDS, RawCommand, clips, norm_model, running_board, small_model
from train.corpus import discover
from train.splits import make_manifest, save_manifest

REPLY_TIMEOUT = 0.6  # as tests/test_fault_relay.py: above the board's inter-byte timeout plus a frame


def _stream(session: BoardSession, reference: HostReference, pcms: list[np.ndarray]) -> list[bool]:
    """Each clip on the board with the statistics the host expects before it; whether each answer is the host's."""
    same = []
    for pcm in pcms:
        before = reference.norm_state()
        want = reference(pcm)
        got = np.array(session.classify(pcm, norm=before).result.scores, np.int8)
        same.append(bool(np.array_equal(got, want)))
    return same


def _empty(info_norm: tuple[int, int]) -> NormState:
    mode, bins = info_norm
    return NormState(mode, 0, 0, (0,) * bins, (0,) * bins)


def test_the_statistics_change_what_the_model_sees() -> None:
    """The same clip, standardised by the prior and by four clips of the voice, is another model input."""
    model, pcms = norm_model("bins"), clips(5)
    fresh, heard = HostReference(model), HostReference(model)
    for pcm in pcms[1:]:
        heard.model_input(pcm)
    assert not np.array_equal(fresh.model_input(pcms[0]), heard.model_input(pcms[0]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["scalar", "bins"])
def test_board_keeps_the_voice_statistics_itself_bit_exact_with_the_host_across_reset_and_load(kind: str, mode: str) -> None:
    model = norm_model(mode)
    reference = HostReference(model)
    pcms = clips(6)
    with running_board(kind, model) as board:
        session = BoardSession(board.url, model, timeout=REPLY_TIMEOUT)
        info = session.connect()
        assert info.speaker_norm == ((1, 1) if mode == "scalar" else (2, 64))
        assert session.read_norm() == _empty(info.speaker_norm)

        assert _stream(session, reference, pcms[:4]) == [True] * 4
        assert session.stats.norm_loads == 1  # at first contact only: from then on the board kept them up itself
        held = session.read_norm()
        assert held == reference.norm_state() and held.clips == 4 and held.frames == 4 * 30

        assert session.link.norm(Norm.RESET) == _empty(info.speaker_norm)
        reference.reset_voice()
        session.norm_unsure = False  # both sides hold the empty state: the board must answer from it unaided
        assert _stream(session, reference, pcms[:1]) == [True]
        assert session.read_norm() == reference.norm_state()

        # A saved state loaded into the board continues exactly where it stood.
        assert session.link.norm(Norm.LOAD, held) == held
        reference.load_norm(held)
        session.norm_unsure = False
        assert _stream(session, reference, pcms[4:]) == [True, True]
        assert session.read_norm() == reference.norm_state()
        session.close()


@pytest.mark.parametrize("kind", KINDS)
def test_statistics_survive_a_noisy_link_and_board_resets(kind: str) -> None:
    """Through the fault relay (bytes dropped, flipped, doubled; the board reset now and then) every clip is
    still standardised as the host expects: after a reset or a failed attempt the session loads the host's state."""
    model = norm_model("bins")
    reference = HostReference(model)
    pcms = clips(5, first=2)
    plan = FaultPlan(seed=5, to_board=ByteFaults(flip=2e-5), to_tool=ByteFaults(drop=3e-4, flip=3e-4), reset_every=47)
    with running_board(kind, model) as board, FaultRelay(board.url, plan) as relay:
        session = BoardSession(relay.url, model, attempts=8, timeout=REPLY_TIMEOUT)
        session.connect()
        assert _stream(session, reference, pcms) == [True] * len(pcms)
        assert session.read_norm() == reference.norm_state()
        session.close()
    assert relay.counts["reset"] >= 1 and session.resets >= 1
    assert session.stats.norm_loads >= 2  # first contact, and again after the board lost its statistics


@pytest.mark.parametrize("kind", KINDS)
def test_norm_refusals_say_what_is_wrong(kind: str) -> None:
    model = norm_model("scalar")
    with running_board(kind, model) as board:
        session = BoardSession(board.url, model, timeout=REPLY_TIMEOUT)
        session.connect()
        session.classify(clips(1)[0])
        held = session.read_norm()
        assert held.clips == 1
        with pytest.raises(BoardError, match=r"BAD_NORM.*no voice"):
            session.link.norm(Norm.LOAD, NormState(1, 3, 90, (0,), (-1,)))  # negative squares
        with pytest.raises(BoardError, match=r"BAD_NORM.*another mode"):
            session.link.norm(Norm.LOAD, NormState(2, 0, 0, (0,) * 64, (0,) * 64))
        with pytest.raises(BoardError, match=r"BAD_NORM.*NORM op"):
            session.link.request(RawCommand(Norm.TYPE, b"\x07"), (NormState,))
        assert session.read_norm() == held  # nothing refused changed the state
        session.close()
    plain = small_model()
    with running_board(kind, plain) as board:
        session = BoardSession(board.url, plain, timeout=REPLY_TIMEOUT)
        session.connect()
        assert session.info.speaker_norm is None
        with pytest.raises(BoardError, match="no per-speaker normalisation"):
            session.link.norm(Norm.READ)
        with pytest.raises(BoardError, match=r"BAD_NORM.*no speaker normalisation"):
            session.link.request(RawCommand(Norm.TYPE, b"\x00"), (NormState,))
        session.close()


def _norm_run(folder: Path, corpus: Path, model: bytes, split: str = "loso", fold: int = 1) -> Path:
    folder.mkdir(parents=True)
    save_manifest(make_manifest(discover(corpus), split, fold), folder / "manifest.json")
    (folder / MODEL_FILE).write_bytes(model)
    return folder


@pytest.mark.parametrize("kind", KINDS)
def test_ser_eval_streams_each_voice_in_order_and_a_resumed_run_rebuilds_its_statistics(
    kind: str, tmp_path: Path, synthetic_corpus: Path
) -> None:
    model = norm_model("bins")
    run = _norm_run(tmp_path / "run", synthetic_corpus, model)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    argv = ["--run", str(run), "--data", str(synthetic_corpus), "--quiet", "--split", "all", "--limit", "24"]
    with running_board(kind, model) as one, running_board(kind, model) as two:
        ports = ["--port", one.url, "--port", two.url]
        assert eval_on_device.main([*argv, "--out", str(whole), *ports]) == 0
        summary = json.loads((whole / "summary.json").read_text())
        assert summary["agreement"]["bit_exact_clips"] == summary["clips"]["ok"] == 24
        assert summary["speaker_norm"]["statistics_bit_exact"] == {s: True for s in summary["speakers"]}
        assert sum(v["clips"] for v in summary["speaker_norm"]["accuracy_by_clips_heard"].values()) == 24
        records = [json.loads(line) for line in (whole / RESULTS).read_text().splitlines()]
        heard = [r["norm_clips"] for r in records if r["status"] == "ok" and r["clip"].startswith(records[0]["clip"][:3])]
        assert sorted(heard) == list(range(len(heard)))  # one voice's clips, each after the ones before it

        # Cut off after 14 clips: the resumed run replays them on the host, and every later answer is the same.
        shutil.copytree(whole, cut)
        kept = [r for r in records if r["status"] == "ok"][:14]
        (cut / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in kept))
        assert eval_on_device.main(["--resume", str(cut), "--data", str(synthetic_corpus), "--quiet", *ports]) == 0
    again = read_results(cut / RESULTS)
    for clip, record in read_results(whole / RESULTS).items():
        if record["status"] == "ok":
            assert again[clip]["scores"] == record["scores"] and again[clip]["norm_clips"] == record["norm_clips"], clip
    resumed = json.loads((cut / "summary.json").read_text())
    kept_clips = {r["clip"] for r in kept}
    streamed_again = {r["clip"].split("/", 1)[0] for r in records if r["status"] == "ok" and r["clip"] not in kept_clips}
    assert resumed["speaker_norm"]["statistics_bit_exact"] == dict.fromkeys(streamed_again, True)


def _known_voice_run(folder: Path, corpus: Path, model: bytes, sums: bool = True) -> Path:
    """A 10-fold run folder as ser-train writes it for a speaker-normalised model: its manifest, and
    ``speaker_norm.json`` with each training speaker's statistics and sums over that speaker's training
    clips; ``sums=False``: as a run saved before the sums were kept (statistics only)."""
    from train.corpus import load_corpus
    from train.frontend import clip_features
    from train.speaker_norm import SPEAKER_NORM_FILE, by_speaker, pooled, save_speaker_norm

    _norm_run(folder, corpus, model, "kfold", 0)
    role = {c["path"]: c["role"] for c in json.loads((folder / "manifest.json").read_text())["clips"]}
    training = [c for c in discover(corpus) if role[c.path] == "train"]
    raws = [clip_features(pcm, CFG.raw) for pcm in load_corpus(corpus, training)]
    voices = by_speaker([c.speaker for c in training], raws, "bins")
    save_speaker_norm(folder / SPEAKER_NORM_FILE, "bins", pooled(raws, "bins"), voices)
    if not sums:
        saved = json.loads((folder / SPEAKER_NORM_FILE).read_text())
        for voice in saved["speakers"].values():
            del voice["sums"]
        (folder / SPEAKER_NORM_FILE).write_text(json.dumps(saved))
    return folder


def test_a_known_voice_is_loaded_from_the_sums_training_saved(tmp_path: Path, synthetic_corpus: Path) -> None:
    """The board's NORM state for a known voice comes from training's saved sums, with no clip read; they are
    the sums the host's board reference gets by hearing that voice's training clips (an older run's way)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(synthetic_corpus, corpus)
    model = norm_model("bins")
    saved = eval_on_device.known_voices(_known_voice_run(tmp_path / "new", corpus, model), corpus, model)
    rebuilt = eval_on_device.known_voices(_known_voice_run(tmp_path / "old", corpus, model, sums=False), corpus, model)
    assert saved == rebuilt and sorted(saved) == sorted({c.speaker for c in discover(corpus)})  # 10-fold: all four
    assert all(s["clips"] > 0 and s["frames"] > 0 for s in saved.values())
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    (corpus / next(c["path"] for c in manifest["clips"] if c["role"] == "train")).unlink()  # the saved sums need no audio
    assert eval_on_device.known_voices(tmp_path / "new", corpus, model) == saved


@pytest.mark.parametrize("kind", KINDS)
def test_ser_eval_starts_each_clip_of_a_known_voice_from_its_training_statistics(
    kind: str, tmp_path: Path, synthetic_corpus: Path
) -> None:
    """10-fold: every test voice is a training voice. Each of its clips is standardised by the statistics of
    the voice's training clips (as training scored it), on the board and the host alike; --new-voices scores
    the same clips causally instead."""
    model = norm_model("bins")
    run = _known_voice_run(tmp_path / "run", synthetic_corpus, model)
    argv = ["--run", str(run), "--data", str(synthetic_corpus), "--quiet"]
    with running_board(kind, model) as board:
        assert eval_on_device.main([*argv, "--out", str(tmp_path / "known"), "--port", board.url]) == 0
        assert eval_on_device.main([*argv, "--out", str(tmp_path / "new"), "--port", board.url, "--new-voices"]) == 0
        assert eval_on_device.main([*argv, "--out", str(tmp_path / "all"), "--port", board.url, "--split", "all"]) == 2

    meta = json.loads((tmp_path / "known" / RUN_INFO).read_text())
    trained = json.loads((run / "speaker_norm.json").read_text())["speakers"]
    assert sorted(meta["known_voices"]) == sorted(trained)
    reference = HostReference(model)
    for speaker, state in meta["known_voices"].items():  # the board's sums give training's statistics, bit for bit
        sums = (tuple(state["sum"]), tuple(state["squares"]))
        reference.load_norm(NormState(state["mode"], state["clips"], state["frames"], *sums))
        mean, std = reference.speaker_norm.current()
        np.testing.assert_array_equal(mean, np.float32(trained[speaker]["mean"]))
        np.testing.assert_array_equal(std, np.float32(trained[speaker]["std"]))

    known = [r for r in read_results(tmp_path / "known" / RESULTS).values() if r["status"] == "ok"]
    new = read_results(tmp_path / "new" / RESULTS)
    summary = json.loads((tmp_path / "known" / "summary.json").read_text())
    assert summary["agreement"]["bit_exact_clips"] == summary["clips"]["ok"] == len(known) > 0
    assert summary["speaker_norm"]["known_voices"]["clips"] == len(known)
    assert summary["speaker_norm"]["statistics_bit_exact"] == {s: True for s in summary["speakers"]}
    assert json.loads((tmp_path / "new" / "summary.json").read_text())["speaker_norm"].get("known_voices") is None
    for r in known:
        speaker = r["clip"].split("/", 1)[0]
        assert r["voice"] == "known" and r["norm_clips"] == meta["known_voices"][speaker]["clips"]
        assert new[r["clip"]]["voice"] == "new" and new[r["clip"]]["norm_clips"] < r["norm_clips"]
    assert any(new[r["clip"]]["host_scores"] != r["host_scores"] for r in known)  # other statistics, other inputs
    assert "Voices the model was trained on" in (tmp_path / "known" / "summary.md").read_text()


def test_ser_eval_refuses_an_older_runs_known_voice_whose_training_clips_are_gone(
    tmp_path: Path, synthetic_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(synthetic_corpus, corpus)
    run = _known_voice_run(tmp_path / "run", corpus, norm_model("bins"), sums=False)
    training = next(c["path"] for c in json.loads((run / "manifest.json").read_text())["clips"] if c["role"] == "train")
    (corpus / training).unlink()
    argv = ["--run", str(run), "--data", str(corpus), "--quiet", "--port", "socket://127.0.0.1:9", "--out", str(tmp_path / "r")]
    assert eval_on_device.main(argv) == 2
    err = capsys.readouterr().err
    assert training in err and "--new-voices" in err
    assert not (tmp_path / "r" / RESULTS).exists()
