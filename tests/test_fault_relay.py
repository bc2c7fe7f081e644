"""A fault-injecting relay between the host and a board: whatever breaks on the link, the results
equal a clean run's, and every clip is answered exactly once.

The client is ``BoardSession`` (what ser-eval uses): BoardLink resends a damaged exchange, the
session reopens a cut link and shakes hands again after a board reset, then sends the clip again.
"""

from __future__ import annotations

import pytest

from host.fault_relay import TO_BOARD, TO_TOOL, ByteFaults, FaultPlan, FaultRelay
from host.session import BoardSession, ClipOutcome
from tests.boards_under_test import KINDS, clips, reference, running_board, small_model

# Local links answer in milliseconds. Longer than the board's inter-byte timeout (0.2 s) plus a frame, so
# that a command cut short has been dropped by the board before its retry arrives (PROTOCOL.md 4).
REPLY_TIMEOUT = 0.6


def _run(url: str, model: bytes, pcms: list) -> tuple[dict[int, ClipOutcome], BoardSession]:
    session = BoardSession(url, model, attempts=8, timeout=REPLY_TIMEOUT)
    try:
        session.connect()
        results = {i: session.classify(pcm) for i, pcm in enumerate(pcms)}
    finally:
        session.close()
    return results, session


def _check(results: dict[int, ClipOutcome], model: bytes, pcms: list) -> None:
    """Every clip answered with the clean run's scores."""
    assert sorted(results) == list(range(len(pcms)))
    for i, pcm in enumerate(pcms):
        assert list(results[i].result.scores) == reference(model, pcm)


@pytest.fixture(scope="module")
def model() -> bytes:
    return small_model()


@pytest.mark.parametrize("kind", KINDS)
def test_clean_relay_changes_nothing(kind: str, model: bytes) -> None:
    pcms = clips(2)
    with running_board(kind, model) as board, FaultRelay(board.url) as relay:
        results, client = _run(relay.url, model, pcms)
    _check(results, model, pcms)
    assert client.retries == 0 and client.reconnects == 0 and client.resets == 0
    assert relay.counts["connections"] == 1 and relay.counts["tool_frames"] > 2 * 16
    assert not [key for key in relay.counts if isinstance(key, tuple)]  # no byte fault


# per-byte rates, to the board and to the client: a few faults each way over two clips (~40 KB / ~1 KB)
BYTE_FAULTS = {
    "drop": (ByteFaults(drop=1.5e-4), ByteFaults(drop=1.5e-3)),
    "flip": (ByteFaults(flip=1.5e-4), ByteFaults(flip=1.5e-3)),
    "duplicate": (ByteFaults(duplicate=1.5e-4), ByteFaults(duplicate=1.5e-3)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", BYTE_FAULTS)
def test_byte_faults_both_ways_leave_results_intact(kind: str, fault: str, model: bytes) -> None:
    """BoardLink's own retries suffice here: the board answers a damaged command with an error or
    silence, a damaged reply makes the client time out, and the resent command gets the stored reply."""
    to_board, to_tool = BYTE_FAULTS[fault]
    pcms = clips(2, first=1)
    with running_board(kind, model) as board, FaultRelay(board.url, FaultPlan(3, to_board, to_tool)) as relay:
        results, client = _run(relay.url, model, pcms)
    _check(results, model, pcms)
    assert relay.counts[fault, TO_BOARD] > 0 and relay.counts[fault, TO_TOOL] > 0
    assert client.retries > 0  # the faults were felt, and answered by resending


@pytest.mark.parametrize("kind", KINDS)
def test_cut_link_is_reopened(kind: str, model: bytes) -> None:
    pcms = clips(3, first=2)
    with running_board(kind, model) as board, FaultRelay(board.url, FaultPlan(cut_every=21)) as relay:
        results, client = _run(relay.url, model, pcms)
    _check(results, model, pcms)
    # every cut loses the reply the client waits for, so every cut is noticed and the clip sent again
    assert relay.counts["cut"] >= 2 and client.reconnects == relay.counts["cut"]
    assert relay.counts["connections"] == relay.counts["cut"] + 1


@pytest.mark.parametrize("kind", KINDS)
def test_board_reset_is_seen_and_the_clip_sent_again(kind: str, model: bytes) -> None:
    pcms = clips(3, first=3)
    with running_board(kind, model) as board, FaultRelay(board.url, FaultPlan(reset_every=20)) as relay:
        results, client = _run(relay.url, model, pcms)
    _check(results, model, pcms)
    assert relay.counts["reset"] >= 2 and relay.counts["board_boots"] >= relay.counts["reset"]
    assert client.resets >= 1  # the board's BOOT reached the client
    # a reset right after the run's last command goes unnoticed; every other one costs a clip restart
    assert client.resets + client.reconnects >= relay.counts["reset"] - 1


def test_everything_at_once_on_the_simulated_board(model: bytes) -> None:
    plan = FaultPlan(
        seed=11,
        to_board=ByteFaults(drop=3e-5, flip=3e-5, duplicate=3e-5),
        to_tool=ByteFaults(drop=5e-4, flip=5e-4, duplicate=5e-4),
        cut_every=41,  # the gaps between cuts and resets must leave room for a whole clip (~18 frames)
        reset_every=37,
    )
    pcms = clips(3, first=5)
    with running_board("sim", model) as board, FaultRelay(board.url, plan) as relay:
        results, _ = _run(relay.url, model, pcms)
    _check(results, model, pcms)
    assert relay.counts["cut"] > 0 and relay.counts["reset"] > 0
    assert sum(n for key, n in relay.counts.items() if isinstance(key, tuple)) > 5
