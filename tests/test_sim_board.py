"""The simulated board over a real pty: the handshake, bit-exact results against host TFLM, the
board's error codes and its idempotent replay. The same tests run on the QEMU board when TFLM
sources are given, so the simulation is held to the firmware's behaviour."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from convert.interpreters import tflm_arena_bytes
from convert.tflite_file import io_specs, operator_names
from host import pcm_codec
from host.board import BoardLink, open_port
from host.protocol import (
    Boot,
    Chunk,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Info,
    Next,
    Parser,
    Reset,
    Result,
    Start,
    TensorSpec,
    decode_message,
    encode_frame,
    encode_message,
)
from host.sim_board import SimulatedBoard
from tests.boards_under_test import CFG, KINDS, bare_model, clips, reference, running_board, small_model
from train.labels import EMOTIONS


class RawPort:
    """Frames in, messages out, with nothing of BoardLink's retrying: to see exactly what the board says."""

    def __init__(self, url: str) -> None:
        self.port = open_port(url)  # waits for QEMU to listen; the emulated board's UART path
        self.parser = Parser()

    def send(self, data: bytes, replies: int = 1, wait: float = 2.0) -> list:
        """Write ``data`` and return the messages the board sends until ``replies`` came or ``wait`` passed."""
        self.port.write(data)
        got, deadline = [], time.monotonic() + wait
        while len(got) < replies and time.monotonic() < deadline:
            got += [decode_message(f) for f in self.parser.feed(self.port.read(4096)) if isinstance(f, Frame)]
        return got

    def drain(self, wait: float = 0.5) -> list:
        return self.send(b"", replies=1_000, wait=wait)

    def close(self) -> None:
        self.port.close()


def _chunk(clip_id: int, offset: int, pcm: np.ndarray) -> Chunk:
    encoding, data = pcm_codec.encode_chunk(pcm)
    return Chunk(clip_id, offset, len(pcm), encoding, data)


def _error(replies: list, code: ErrorCode, msg_type: int, seq: int) -> None:
    assert len(replies) == 1 and isinstance(replies[0], Error), replies
    assert (replies[0].code, replies[0].offending_type, replies[0].offending_seq) == (code, msg_type, seq), replies[0]


@pytest.fixture(scope="module")
def model() -> bytes:
    return small_model()


@pytest.mark.parametrize("kind", KINDS)
def test_handshake_tells_the_model_and_the_board(kind: str, model: bytes) -> None:
    in_spec, out_spec = io_specs(model)
    with running_board(kind, model) as board, BoardLink(board.url) as link:
        info = link.hello()
    assert isinstance(info, Info) and info.proto_version == 1
    assert info.model_sha256 == hashlib.sha256(model).digest()
    assert info.input == TensorSpec(9, in_spec.shape, in_spec.scale, in_spec.zero_point)
    assert info.output == TensorSpec(9, (1, len(EMOTIONS)), out_spec.scale, out_spec.zero_point)
    assert (info.frontend_kind, info.clip_samples, info.sample_rate) == (2, CFG.clip_samples, CFG.sample_rate)
    assert info.labels == tuple(EMOTIONS)
    assert (info.max_chunk_samples, info.pcm_encodings) == (1018, 0x03)
    assert 0 < info.arena_used <= info.arena_size and info.core_clock_hz > 0 and info.build_id
    if kind == "sim":
        assert info.board == "simulated" and "nanoseconds" in info.cycle_counter
        assert info.arena_used == tflm_arena_bytes(model)
    else:
        assert info.board == "qemu-mps2-an386" and "instructions" in info.cycle_counter


@pytest.mark.parametrize("kind", KINDS)
def test_scores_equal_host_tflm_bit_for_bit(kind: str, model: bytes) -> None:
    with running_board(kind, model) as board, BoardLink(board.url) as link:
        link.hello()
        results = [link.classify(pcm, 100 + i, compress=i != 1) for i, pcm in enumerate(clips(3))]
        profile = link.profile()
    for pcm, result in zip(clips(3), results, strict=True):
        expected = reference(model, pcm)
        assert list(result.scores) == expected
        assert result.class_index == int(np.argmax(expected))
        assert result.frontend_cycles > 0 and result.invoke_cycles > 0
    assert len({r.scores for r in results}) == 3  # the clips really differ in the model's eyes
    assert [r.clip_id for r in results] == [100, 101, 102]
    assert [tag for tag, _ in profile.entries] == operator_names(model)


def test_model_without_front_end_takes_the_samples_as_input() -> None:
    model = bare_model()
    elements = int(np.prod(io_specs(model)[0].shape))
    pcm = np.random.default_rng(0).integers(-300, 300, elements).astype(np.int16)  # some beyond int8
    with SimulatedBoard(model) as board, BoardLink(board.url) as link:
        info = link.hello()
        assert (info.frontend_kind, info.clip_samples) == (0, elements)
        assert info.labels == tuple(f"class_{i}" for i in range(6))  # a foreign model's labels, as ser-emit gives them
        assert list(link.classify(pcm, 1).scores) == reference(model, pcm)


@pytest.mark.parametrize("kind", KINDS)
def test_protocol_errors_get_the_boards_error_codes(kind: str, model: bytes) -> None:
    pcm = clips(1)[0]
    with running_board(kind, model) as board:
        port = RawPort(board.url)
        port.drain()  # BOOT
        bad_crc = bytearray(encode_message(Hello(), 7))
        bad_crc[-1] ^= 0x01
        _error(port.send(bytes(bad_crc)), ErrorCode.BAD_CRC, 0x01, 7)
        _error(port.send(b"\xa5\x5a\x01\x08\xff\xff"), ErrorCode.TOO_LONG, 0x01, 8)
        _error(port.send(encode_frame(0x42, 9)), ErrorCode.UNKNOWN_TYPE, 0x42, 9)
        _error(port.send(encode_frame(0x82, 10, bytes(10))), ErrorCode.UNKNOWN_TYPE, 0x82, 10)  # a board message
        _error(port.send(encode_frame(0x01, 11, b"\x00")), ErrorCode.BAD_LENGTH, 0x01, 11)
        _error(port.send(encode_frame(0x02, 12, bytes(7))), ErrorCode.BAD_LENGTH, 0x02, 12)
        _error(port.send(encode_message(Start(1, CFG.clip_samples - 1), 13)), ErrorCode.BAD_CLIP, 0x02, 13)
        _error(port.send(encode_message(_chunk(1, 0, pcm[:100]), 14)), ErrorCode.OUT_OF_ORDER, 0x03, 14)
        assert port.send(encode_message(Start(1, CFG.clip_samples), 15)) == [Next(1, 0, 1018)]
        _error(port.send(encode_message(_chunk(1, 5, pcm[5:100]), 16)), ErrorCode.OUT_OF_ORDER, 0x03, 16)
        _error(port.send(encode_message(_chunk(2, 0, pcm[:100]), 17)), ErrorCode.OUT_OF_ORDER, 0x03, 17)
        too_many = Chunk(1, 0, 1019, pcm_codec.RICE, pcm_codec.encode_rice(pcm[:1019]))
        _error(port.send(encode_message(too_many, 18)), ErrorCode.BAD_LENGTH, 0x03, 18)
        short_raw = encode_frame(0x03, 19, Chunk(1, 0, 4, 0, b"\x00" * 6).encode())
        _error(port.send(short_raw), ErrorCode.BAD_LENGTH, 0x03, 19)
        _error(port.send(encode_message(Chunk(1, 0, 4, 7, bytes(8)), 20)), ErrorCode.BAD_ENCODING, 0x03, 20)
        padded = bytearray(pcm_codec.encode_rice(np.zeros(12, np.int16)))
        padded[-1] |= 0x01  # a padding bit set
        _error(port.send(encode_message(Chunk(1, 0, 12, 1, bytes(padded)), 21)), ErrorCode.BAD_ENCODING, 0x03, 21)
        start = time.monotonic()
        _error(port.send(encode_message(Start(1, CFG.clip_samples), 22)[:7]), ErrorCode.TRUNCATED, 0x02, 22)
        assert 0.15 < time.monotonic() - start < 1.0  # the board's 200 ms inter-byte timeout
        # none of the refused commands changed the clip: it still wants offset 0 and classifies right
        offset, seq, reply = 0, 23, None
        while offset < CFG.clip_samples:
            part = pcm[offset : offset + 1018]
            (reply,) = port.send(encode_message(_chunk(1, offset, part), seq))
            offset, seq = offset + len(part), seq + 1
        assert isinstance(reply, Result) and list(reply.scores) == reference(model, pcm)
        port.close()


@pytest.mark.parametrize("kind", KINDS)
def test_retried_commands_get_the_remembered_reply(kind: str, model: bytes) -> None:
    pcm = clips(1, first=4)[0]
    with running_board(kind, model) as board:
        port = RawPort(board.url)
        port.drain()
        start = encode_message(Start(7, CFG.clip_samples), 40)
        assert port.send(start) == port.send(start) == [Next(7, 0, 1018)]
        first = encode_message(_chunk(7, 0, pcm[:1018]), 41)
        assert port.send(first) == port.send(first) == [Next(7, 1018, 1018)]  # not advanced twice
        offset, seq = 1018, 42
        while offset + 1018 < CFG.clip_samples:
            assert port.send(encode_message(_chunk(7, offset, pcm[offset : offset + 1018]), seq))[0].offset == offset + 1018
            offset, seq = offset + 1018, seq + 1
        last = encode_message(_chunk(7, offset, pcm[offset:]), seq)
        port.port.write(last)
        answers = port.send(last, replies=2)
        assert len(answers) == 2 and answers[0] == answers[1] and isinstance(answers[0], Result)
        assert list(answers[0].scores) == reference(model, pcm)
        if kind == "sim":
            assert board.invocations == 1  # the retry was answered without a second Invoke
        _error(port.send(encode_message(_chunk(7, offset, pcm[offset:]), seq + 1)), ErrorCode.OUT_OF_ORDER, 0x03, seq + 1)
        port.close()


@pytest.mark.parametrize("kind", KINDS)
def test_reset_command_restarts_the_board(kind: str, model: bytes) -> None:
    pcm = clips(1)[0]
    with running_board(kind, model) as board:
        port = RawPort(board.url)
        port.drain()
        assert port.send(encode_message(Start(3, CFG.clip_samples), 1)) == [Next(3, 0, 1018)]
        chunk = encode_message(_chunk(3, 0, pcm[:1018]), 2)
        assert port.send(chunk) == [Next(3, 1018, 1018)]
        (boot,) = port.send(encode_message(Reset(), 3), wait=5.0)
        assert isinstance(boot, Boot) and boot.model_sha256 == hashlib.sha256(model).digest()
        if kind == "sim":
            assert (boot.reset_code, boot.reset_text) == (3, "software reset")
        # the clip and the remembered reply are gone: a retry is refused, not replayed
        _error(port.send(chunk), ErrorCode.OUT_OF_ORDER, 0x03, 2)
        port.close()


def test_reset_pin_loses_the_clip_and_says_so(model: bytes) -> None:
    pcm = clips(1)[0]
    with SimulatedBoard(model) as board:
        port = RawPort(board.url)  # opening the pty flushed the power-on BOOT, as with a real port
        (info,) = port.send(encode_message(Hello(), 1))
        assert isinstance(info, Info) and (info.reset_code, info.reset_text) == (1, "power-on")
        assert port.send(encode_message(Start(3, CFG.clip_samples), 2)) == [Next(3, 0, 1018)]
        board.reset()
        (boot,) = port.send(b"")
        assert isinstance(boot, Boot) and (boot.reset_code, boot.reset_text) == (2, "reset pin")
        _error(port.send(encode_message(_chunk(3, 0, pcm[:1018]), 3)), ErrorCode.OUT_OF_ORDER, 0x03, 3)
        port.close()
