"""The per-speaker embedding classifier on the board: its statistics and the host's agree bit for bit.

A model ending at its embedding is followed on the board by ser_embedding_norm.c, which standardises each
clip's embedding by the embeddings of the voice's earlier clips (PROTOCOL.md 15); the host's reference
runs the same C. Every test streams clips to a real board (the simulated one, and the emulated Cortex-M4
when TFLM sources are given) through ``BoardSession``, as ser-eval does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convert.tflite_file import MODEL_FILE
from host import eval_on_device
from host.board import BoardError
from host.eval_report import RESULTS
from host.fault_relay import ByteFaults, FaultPlan, FaultRelay
from host.protocol import Embed, EmbedState
from host.reference import HostReference
from host.session import BoardSession
from tests.boards_under_test import KINDS, RawCommand, clips, embed_model, running_board, small_model
from train.corpus import discover
from train.splits import make_manifest, save_manifest

REPLY_TIMEOUT = 0.6  # as tests/test_fault_relay.py: above the board's inter-byte timeout plus a frame
EMPTY = EmbedState(0, (0,) * 16, (0,) * 16)


def _stream(session: BoardSession, reference: HostReference, pcms: list[np.ndarray]) -> list[bool]:
    """Each clip on the board with the statistics the host expects before it; whether each answer (scores and
    class) is the host's."""
    same = []
    for pcm in pcms:
        before = reference.embed_state()
        want = reference(pcm)
        result = session.classify(pcm, embed=before).result
        got = np.array(result.scores, np.int8)
        same.append(bool(np.array_equal(got, want)) and result.class_index == int(np.argmax(reference.embedding.logits)))
    return same


def test_the_classifier_answers_differ_once_the_voice_is_heard() -> None:
    """The same clip, scored with the prior and after five clips of the voice, gets other scores."""
    model, pcms = embed_model(), clips(6)
    fresh, heard = HostReference(model), HostReference(model)
    for pcm in pcms[1:]:
        heard(pcm)
    assert heard.embed_state().clips == 5
    assert not np.array_equal(fresh(pcms[0]), heard(pcms[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_board_keeps_the_embedding_statistics_itself_bit_exact_with_the_host_across_reset_and_load(kind: str) -> None:
    model = embed_model()
    reference = HostReference(model)
    pcms = clips(7)
    with running_board(kind, model) as board:
        session = BoardSession(board.url, model, timeout=REPLY_TIMEOUT)
        info = session.connect()
        assert info.embedding_norm == (16, 6, 2) and len(info.labels) == 6 and info.output.dims == (1, 16)
        assert session.read_embed() == EMPTY

        assert _stream(session, reference, pcms[:5]) == [True] * 5
        assert session.stats.norm_loads == 1  # at first contact only: from then on the board kept them up itself
        held = session.read_embed()
        assert held == reference.embed_state() and held.clips == 5

        assert session.link.embed(Embed.RESET) == EMPTY
        reference.reset_voice()
        session.norm_unsure = False  # both sides hold the empty state: the board must answer from it unaided
        assert _stream(session, reference, pcms[5:6]) == [True]

        reference.load_embed(held)  # back to the voice heard before
        assert session.link.embed(Embed.LOAD, held) == held
        assert _stream(session, reference, pcms[6:]) == [True]
        assert session.read_embed() == reference.embed_state() and reference.embed_state().clips == 6
        session.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_classifier_on_the_unit_length_embedding_is_bit_exact_on_the_board(kind: str) -> None:
    """The model's metadata tells the board to scale the standardised embedding to length 1 first: its answers are
    the host's, and not those of the same classifier on the plain standardised embedding."""
    model, pcms = embed_model(unit_length=True), clips(5, first=1)
    reference = HostReference(model)
    with running_board(kind, model) as board:
        session = BoardSession(board.url, model, timeout=REPLY_TIMEOUT)
        session.connect()
        assert _stream(session, reference, pcms) == [True] * len(pcms)
        session.close()
    unit, plain = HostReference(model), HostReference(embed_model())  # the same voice heard afresh by both
    assert unit.embedding.head.unit_length and not plain.embedding.head.unit_length
    assert [np.array_equal(unit(pcm), plain(pcm)) for pcm in pcms].count(False) >= 3


@pytest.mark.parametrize("kind", KINDS)
def test_embedding_statistics_survive_a_noisy_link_and_board_resets(kind: str) -> None:
    """Through the fault relay (bytes dropped, flipped; the board reset now and then) every clip is still scored
    as the host expects: after a reset or a failed attempt the session loads the host's state."""
    model = embed_model()
    reference = HostReference(model)
    pcms = clips(5, first=2)
    plan = FaultPlan(seed=5, to_board=ByteFaults(flip=2e-5), to_tool=ByteFaults(drop=3e-4, flip=3e-4), reset_every=47)
    with running_board(kind, model) as board, FaultRelay(board.url, plan) as relay:
        session = BoardSession(relay.url, model, attempts=8, timeout=REPLY_TIMEOUT)
        session.connect()
        assert _stream(session, reference, pcms) == [True] * len(pcms)
        assert session.read_embed() == reference.embed_state()
        session.close()
    assert relay.counts["reset"] >= 1 and session.resets >= 1
    assert session.stats.norm_loads >= 2  # first contact, and again after the board lost its statistics


@pytest.mark.parametrize("kind", KINDS)
def test_embed_refusals_say_what_is_wrong(kind: str) -> None:
    model = embed_model()
    with running_board(kind, model) as board:
        session = BoardSession(board.url, model, timeout=REPLY_TIMEOUT)
        session.connect()
        session.classify(clips(1)[0])
        held = session.read_embed()
        assert held.clips == 1
        with pytest.raises(BoardError, match=r"BAD_NORM.*no voice"):
            session.link.embed(Embed.LOAD, EmbedState(3, (0,) * 16, (-1,) + (0,) * 15))  # negative squares
        with pytest.raises(BoardError, match=r"BAD_NORM.*no voice"):
            session.link.embed(Embed.LOAD, EmbedState(1, (200,) + (0,) * 15, (40000,) + (0,) * 15))  # beyond 128 a clip
        with pytest.raises(BoardError, match=r"BAD_NORM.*another embedding size"):
            session.link.embed(Embed.LOAD, EmbedState(0, (0,) * 8, (0,) * 8))
        with pytest.raises(BoardError, match=r"BAD_NORM.*EMBED op"):
            session.link.request(RawCommand(Embed.TYPE, b"\x07"), (EmbedState,))
        assert session.read_embed() == held  # nothing refused changed the state
        session.close()
    plain = small_model()
    with running_board(kind, plain) as board:
        session = BoardSession(board.url, plain, timeout=REPLY_TIMEOUT)
        session.connect()
        assert session.info.embedding_norm is None
        with pytest.raises(BoardError, match="no embedding statistics"):
            session.link.embed(Embed.READ)
        with pytest.raises(BoardError, match=r"BAD_NORM.*no embedding statistics"):
            session.link.request(RawCommand(Embed.TYPE, b"\x00"), (EmbedState,))
        session.close()


@pytest.mark.parametrize("kind", KINDS)
def test_ser_eval_streams_each_voice_from_a_fresh_state_and_checks_it_after_the_voice(
    kind: str, tmp_path: Path, synthetic_corpus: Path
) -> None:
    model = embed_model()
    run = tmp_path / "run"
    run.mkdir()
    save_manifest(make_manifest(discover(synthetic_corpus), "loso", 1), run / "manifest.json")
    (run / MODEL_FILE).write_bytes(model)
    out = tmp_path / "eval"
    argv = ["--run", str(run), "--data", str(synthetic_corpus), "--quiet", "--split", "all", "--limit", "24", "--out", str(out)]
    with running_board(kind, model) as one, running_board(kind, model) as two:
        assert eval_on_device.main([*argv, "--port", one.url, "--port", two.url]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agreement"]["bit_exact_clips"] == summary["clips"]["ok"] == 24
    assert summary["speaker_norm"]["statistics_bit_exact"] == {s: True for s in summary["speakers"]}
    records = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    for speaker in summary["speakers"]:
        heard = [r["norm_clips"] for r in records if r["status"] == "ok" and r["clip"].startswith(f"{speaker}/")]
        assert sorted(heard) == list(range(len(heard)))  # each voice from nothing, each clip after the ones before it
