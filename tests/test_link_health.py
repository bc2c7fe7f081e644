"""Link health: the host counts what goes wrong on the serial line, names the likely cause from those
counts, and under heavy byte errors shortens its chunks so that every clip still gets through.

Real parts only: the fault relay over a real socket, the simulated board on a real pty, the QEMU board
when SER_DEPS_DIR is set, and bare ptys for a board that never answers or one heard at the wrong rate.
"""

from __future__ import annotations

import os
import random
import select
import threading
import tty
from collections.abc import Iterator

import pytest

from host.board import CHUNK_FLOOR, BoardLink, LinkStats, diagnose, link_summary
from host.fault_relay import ByteFaults, FaultPlan, FaultRelay
from host.protocol import CHUNK_MAX_RAW_SAMPLES
from host.session import BoardSession, FatalBoardError
from tests.boards_under_test import KINDS, clips, reference, running_board, small_model

REPLY_TIMEOUT = 0.6  # local links answer in milliseconds


@pytest.fixture(scope="module")
def model() -> bytes:
    return small_model()


# ---- the diagnosis, from counts as real runs produced them ----


def test_damaged_replies_mean_a_noisy_link() -> None:
    # a run at 2e-3 per byte: replies came, some damaged, and the board refused some of our chunks
    counts = LinkStats(frames_sent=412, frames_received=371, bytes_received=9630, crc_errors=23, resyncs=9, refusals=31)
    assert diagnose(counts).startswith("noisy or overrun link")
    assert "lower baud rate" in diagnose(counts)


def test_nothing_at_all_means_a_silent_board() -> None:
    counts = LinkStats(frames_sent=6, bytes_sent=48, timeouts=6, retries=5)
    assert diagnose(counts, first_contact=True).startswith("silent board")


def test_bytes_but_never_a_frame_from_the_start_mean_a_wrong_baud_rate() -> None:
    counts = LinkStats(frames_sent=6, bytes_sent=48, bytes_received=1710, resyncs=6, retries=5)
    assert diagnose(counts, first_contact=True).startswith("wrong baud rate")
    # the same garbage after the board has spoken properly is damage on a link that worked
    assert diagnose(counts, first_contact=False).startswith("noisy or overrun link")


def test_valid_frames_of_another_protocol_mean_other_firmware() -> None:
    counts = LinkStats(frames_sent=6, frames_received=6, bytes_received=96, foreign=6, retries=5)
    assert diagnose(counts, first_contact=False).startswith("other firmware")


def test_timeouts_around_cuts_and_resets_are_not_a_silent_board() -> None:
    counts = LinkStats(frames_sent=120, frames_received=118, bytes_received=2900, timeouts=2, resets=1, reopens=1)
    assert diagnose(counts).startswith("link cut or board reset")
    assert diagnose(LinkStats(frames_sent=40, frames_received=40, bytes_received=800)).startswith("clean link")


# ---- boards that do not answer properly ----


def _answer_with(master: int, stop: threading.Event, garbage: bool) -> None:
    """Read what the host sends; answer each burst with bytes that hold no sync pair (as a UART at the wrong
    rate delivers), or with nothing."""
    rng = random.Random(0)
    while not stop.is_set():
        if select.select([master], [], [], 0.05)[0]:
            try:
                os.read(master, 4096)
            except OSError:
                return
            if garbage:
                os.write(master, bytes(rng.choice(range(0x00, 0xA5)) for _ in range(60)))


@pytest.fixture(params=[False, True], ids=["silent", "wrong-baud"])
def mute_board(request) -> Iterator[tuple[str, bool]]:
    master, slave = os.openpty()  # the slave stays open here too: with no one on it the master reads fail
    tty.setraw(slave)
    stop = threading.Event()
    t = threading.Thread(target=_answer_with, args=(master, stop, request.param), daemon=True)
    t.start()
    yield os.ttyname(slave), request.param
    stop.set()
    t.join()
    os.close(master)
    os.close(slave)


def test_a_board_that_never_answers_properly_is_named_for_what_it_does(mute_board: tuple[str, bool], model: bytes) -> None:
    url, garbage = mute_board
    session = BoardSession(url, model, timeout=0.3)
    with pytest.raises(FatalBoardError) as exc:
        session.connect()
    message = str(exc.value)
    if garbage:
        assert "wrong baud rate" in message and "silent" not in message
        assert session.stats.resyncs > 0 and session.stats.frames_received == 0
    else:
        assert "silent board" in message and "baud" not in message
        assert session.stats.timeouts == session.stats.frames_sent > 1


# ---- a noisy line ----


def _noisy(rate: float, seed: int) -> FaultPlan:
    faults = ByteFaults(drop=rate, flip=rate, duplicate=rate / 2)
    return FaultPlan(seed, faults, faults)


@pytest.mark.parametrize("kind", KINDS)
def test_a_noisy_line_costs_time_not_clips(kind: str, model: bytes) -> None:
    """At 1e-3 drops and flips per byte each way (a 1.2 KB chunk frame arrives whole one time in 20) every
    clip gets through with the clean run's scores, because the chunks shrink; the counts and the diagnosis
    say why it was slow."""
    pcms = clips(2, first=7)
    with running_board(kind, model) as board, FaultRelay(board.url, _noisy(1e-3, seed=4)) as relay:
        session = BoardSession(relay.url, model, timeout=REPLY_TIMEOUT)
        try:
            session.connect()
            outcomes = [session.classify(pcm) for pcm in pcms]
        finally:
            session.close()
    assert [list(o.result.scores) for o in outcomes] == [reference(model, pcm) for pcm in pcms]
    s = session.stats
    assert relay.counts["flip", "to_tool"] > 0 and relay.counts["flip", "to_board"] > 0
    assert s.crc_errors > 0 and s.refusals > 0
    assert CHUNK_FLOOR <= s.smallest_chunk < CHUNK_MAX_RAW_SAMPLES // 2
    assert session.diagnosis().startswith("noisy or overrun link")
    line = link_summary(session.link_report())  # what summary.md says of the board
    assert f"{s.crc_errors} CRC/framing errors" in line and session.diagnosis() in line


def test_the_handshake_survives_5e_3_per_byte(model: bytes) -> None:
    """INFO is ~370 bytes: at 5e-3 drops, 5e-3 flips and 2.5e-3 duplicates per byte about one in a hundred
    arrives whole; the host keeps asking as long as damaged answers keep coming."""
    with running_board("sim", model) as board, FaultRelay(board.url, _noisy(5e-3, seed=2)) as relay:
        with BoardLink(relay.url, timeout=REPLY_TIMEOUT) as link:
            info = link.hello()
    assert info.model_sha256 is not None and info.labels
    assert link.stats.retries > 5  # more than the silent-line budget
    assert link.stats.crc_errors > 0
