"""The loader refuses malformed corpora with messages that name the file and the problem."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_corpus, write_wav
from train.corpus import SPEAKERS, CorpusError, discover, read_wav, resolve_root, verify_checksums
from train.labels import EMOTIONS


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "casia", sentences=1)


def test_discovers_every_clip_in_fixed_order(corpus: Path) -> None:
    clips = discover(corpus)
    assert len(clips) == len(SPEAKERS) * len(EMOTIONS)
    assert clips == discover(corpus)
    assert {c.emotion for c in clips} == set(EMOTIONS)
    assert all((corpus / c.path).exists() for c in clips)


def test_root_from_flag_or_environment(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASIA_ROOT", raising=False)
    with pytest.raises(CorpusError, match="--data"):
        resolve_root(None)
    monkeypatch.setenv("CASIA_ROOT", str(corpus))
    assert resolve_root(None) == corpus
    with pytest.raises(CorpusError, match="does not exist"):
        resolve_root(corpus / "nowhere")


def test_missing_and_extra_speakers(corpus: Path) -> None:
    shutil.rmtree(corpus / SPEAKERS[0])
    with pytest.raises(CorpusError, match=rf"missing speaker folder.*{SPEAKERS[0]}"):
        discover(corpus)
    make_corpus(corpus, sentences=1)
    (corpus / "intruder").mkdir()
    with pytest.raises(CorpusError, match=r"unexpected folder.*intruder"):
        discover(corpus)


def test_missing_extra_and_empty_emotions(corpus: Path) -> None:
    speaker = corpus / SPEAKERS[1]
    shutil.rmtree(speaker / "sad")
    with pytest.raises(CorpusError, match=r"missing emotion folder.*sad"):
        discover(corpus)
    (speaker / "sad").mkdir()
    with pytest.raises(CorpusError, match=r"sad: no \.wav files"):
        discover(corpus)
    shutil.rmtree(speaker / "sad")
    shutil.copytree(speaker / "happy", speaker / "sad")
    (speaker / "bored").mkdir()
    with pytest.raises(CorpusError, match=r"unexpected folder.*bored"):
        discover(corpus)


def test_wav_checks_name_the_file(tmp_path: Path) -> None:
    good = np.zeros(1600, np.int16)
    cases = {
        "rate.wav": (lambda p: write_wav(p, good, rate=8000), "sample rate 8000 Hz"),
        "stereo.wav": (lambda p: write_wav(p, np.zeros(3200, np.int16), channels=2), "2 channels"),
        "width.wav": (lambda p: write_wav(p, np.zeros(1600, np.uint8), width=1), "8-bit"),
        "garbage.wav": (lambda p: p.write_bytes(b"this is not a wav file at all" * 10), "not a readable PCM WAV"),
        "empty.wav": (lambda p: write_wav(p, np.zeros(0, np.int16)), "no samples"),
    }
    for name, (make, message) in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(CorpusError, match=message) as err:
            read_wav(path)
        assert name in str(err.value)
    with pytest.raises(CorpusError, match="not found"):
        read_wav(tmp_path / "absent.wav")


def test_truncated_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    write_wav(path, np.arange(1600, dtype=np.int16))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CorpusError, match=r"cut\.wav: truncated"):
        read_wav(path)


def test_reads_samples_exactly(tmp_path: Path) -> None:
    samples = np.array([0, 1, -1, 32767, -32768, 1234], np.int16)
    write_wav(tmp_path / "x.wav", samples)
    np.testing.assert_array_equal(read_wav(tmp_path / "x.wav"), samples)


def test_checksums(corpus: Path) -> None:
    assert verify_checksums(corpus) == 0  # no SHA256SUMS: nothing to check
    lines = [f"{hashlib.sha256((corpus / c.path).read_bytes()).hexdigest()}  {c.path}" for c in discover(corpus)]
    (corpus / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert verify_checksums(corpus) == len(lines)
    victim = corpus / discover(corpus)[3].path
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=rf"{victim.name}: SHA-256 mismatch"):
        verify_checksums(corpus)


def test_real_corpus_is_complete_and_valid(casia_root: Path) -> None:
    clips = discover(casia_root)
    assert len(clips) == 1200
    assert verify_checksums(casia_root) == 1200
