"""ser-main's stages on the synthetic corpus: one printed line each, the tools' whole output in the log.

The board stage and the host latency are not run here (a firmware build and a minute of timing);
the latency's shape is checked on a short measurement of its own.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from convert.verify import summary
from host.main_job import LOG_FILE, _convert, _train, main, parse_args
from train.latency import THREADS, host_latency, ratio

STAGE_LINE = re.compile(r"^(\w+) +(\w+) +(.+) \((\d+) s\)$")
NOISE = ("fully_quantize", "E0000", "W0000", "I0000", "absl::InitializeLog", "!!!")


def stage_lines(out: str) -> list[tuple[str, str, str]]:
    """(stage, model, result) of every printed line; fails on a line that is not a stage's line."""
    lines = out.splitlines()
    assert all(STAGE_LINE.match(line) for line in lines), lines
    return [STAGE_LINE.match(line).groups()[:3] for line in lines]


def test_train_and_convert_print_one_line_each_and_log_the_rest(
    synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse_args(["--data", str(synthetic_corpus), "--runs", str(tmp_path), "--epochs", "1"])
    run = _train("spectrogram_resnet", args)
    conversion = _convert(run, args)
    (train, model, trained), (convert, _, converted) = stage_lines(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (train, model, convert) == ("train", "spectrogram_resnet", "convert")
    assert trained.startswith(f"float {metrics['test']['accuracy']:.2%} on {metrics['test']['clips']} test clips")
    assert converted == summary(conversion)
    assert ("qat" in conversion) == conversion["qat_advised"]  # QAT exactly when the validation clips call for it

    log = (tmp_path / LOG_FILE).read_text()
    assert "fold 0: test accuracy" in log  # ser-train's own lines
    assert f"{run}: {summary(conversion)}" in log and "# int8 conversion" not in log  # ser-convert's, without the report
    assert not [n for n in NOISE if n in log]  # TensorFlow's C++ lines are stopped where they start

    # a second job reuses both and says so
    _train("spectrogram_resnet", args)
    _convert(run, args)
    (_, _, trained), (_, _, converted) = stage_lines(capsys.readouterr().out)
    assert "reused from" in trained and converted.endswith(", reused")


def test_a_failed_stage_shows_the_end_of_the_log(
    synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The prerequisites hold (a flashed board's port needs no firmware build), but one clip is cut short.
    corpus = tmp_path / "casia"
    shutil.copytree(synthetic_corpus, corpus)
    clip = next(corpus.glob("*/angry/*.wav"))
    clip.write_bytes(clip.read_bytes()[:1000])
    assert main(["--data", str(corpus), "--runs", str(tmp_path / "runs"), "--port", "/dev/null"]) == 2
    out, err = capsys.readouterr()
    log = tmp_path / "runs" / LOG_FILE
    assert out.splitlines() == [f"ser-main: every tool's output goes to {log}"]
    assert f"training audio_resnet failed; the end of {log}:" in err
    assert "truncated" in err  # the tool's own reason, from the log
    assert "ser-train: " in log.read_text()


def test_missing_prerequisites_stop_the_job_before_any_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path / "no-corpus"), "--runs", str(tmp_path / "runs")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("MISSING  CASIA corpus:") and "does not exist" in line for line in lines)
    assert lines[-1].endswith("prerequisite(s) missing")
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_check_only_checks(synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--data", str(synthetic_corpus), "--runs", str(tmp_path / "runs"), "--port", "/dev/null"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "all prerequisites found"
    assert not (tmp_path / "runs").exists()


def test_host_latency_has_a_median_within_its_spread() -> None:
    names = ["audio_resnet", "spectrogram_resnet"]
    latency = host_latency(names, rounds=3, round_seconds=0.05)
    for r in latency.values():
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["threads"] == THREADS and len(r["round_ms"]) == 3 and r["calls"] >= 3 and r["params"] > 0
    faster = ratio(latency["audio_resnet"], latency["spectrogram_resnet"])
    assert 0 < faster["p10"] <= faster["median"] <= faster["p90"]
