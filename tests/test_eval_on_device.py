"""ser-eval end to end: a run's clips streamed to a board over a real serial link, scored against the host.

Every test runs against the simulated board (a real pseudo-terminal, the real front end and the real
TFLM interpreter) and, when TFLM sources are given (SER_DEPS_DIR), against the emulated Cortex-M4 in QEMU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serial

from convert.tflite_file import MODEL_FILE, sha256, with_metadata
from host import eval_on_device
from host.board import INTER_BYTE_TIMEOUT
from host.clips import board_pcm, select
from host.eval_report import RESULTS, read_results
from host.fault_relay import ByteFaults, FaultPlan, FaultRelay
from host.reference import HostReference
from tests.boards_under_test import CFG, DEPS, KINDS, running_board, small_model
from train.corpus import discover
from train.labels import EMOTIONS
from train.splits import make_manifest, save_manifest

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, corpus: Path, tflite: bytes) -> Path:
    """A run folder as ser-convert leaves it: the split manifest and the int8 model carrying its front end."""
    folder.mkdir(parents=True)
    save_manifest(make_manifest(discover(corpus), "paper", 0), folder / "manifest.json")
    (folder / MODEL_FILE).write_bytes(tflite)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, synthetic_corpus: Path) -> Path:
    return _run(tmp_path_factory.mktemp("eval") / "run", synthetic_corpus, small_model())


@pytest.fixture(scope="module")
def other_run(tmp_path_factory: pytest.TempPathFactory, synthetic_corpus: Path) -> Path:
    """The same network with other labels in its metadata: another model file, another hash."""
    meta = {"format": 1, "frontend": CFG.__dict__, "labels": [e.upper() for e in EMOTIONS]}
    return _run(tmp_path_factory.mktemp("eval") / "other", synthetic_corpus, with_metadata(small_model(), meta))


@contextlib.contextmanager
def boards(kind: str, run: Path, n: int = 1) -> Iterator[list[str]]:
    """``n`` boards carrying the run's model, as pyserial URLs."""
    tflite = (run / MODEL_FILE).read_bytes()
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_board(kind, tflite)).url for _ in range(n)]


def _eval(run: Path, urls: list[str], out: Path, corpus: Path, *extra: str) -> int:
    argv = ["--run", str(run), "--out", str(out), "--data", str(corpus), "--quiet", *extra]
    for url in urls:
        argv += ["--port", url]
    return eval_on_device.main(argv)


def _host_answers(run: Path, corpus: Path, clips: list[str]) -> dict[str, list[int]]:
    tflite = (run / MODEL_FILE).read_bytes()
    reference = HostReference(tflite)
    by_path = {c.path: c for c in select(run, "test")}
    return {p: reference(board_pcm(corpus, by_path[p], reference.cfg)).tolist() for p in clips}


@pytest.mark.parametrize("kind", KINDS)
def test_short_evaluation_matches_host_reference(kind: str, run: Path, synthetic_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    with boards(kind, run) as urls:
        assert _eval(run, urls, out, synthetic_corpus, "--limit", "5") == 0
    records = read_results(out / RESULTS)
    assert len(records) == 5 and all(r["status"] == "ok" for r in records.values())
    expected = _host_answers(run, synthetic_corpus, list(records))
    for clip, record in records.items():  # computed here, independently of the tool's own reference
        assert record["scores"] == expected[clip] and record["bit_exact"]
        assert record["predicted"] == int(np.argmax(expected[clip]))
        assert record["invoke_cycles"] > 0 and record["frontend_cycles"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["board"]["accuracy"] == summary["host_tflm"]["accuracy"]
    assert summary["agreement"]["bit_exact_clips"] == 5 and summary["agreement"]["cosine"] == pytest.approx(1.0)
    board = summary["boards"][urls[0]]
    assert board["arena_used"] > 0 and board["labels"] == list(EMOTIONS)
    for name in ("summary.md", "confusion.png", "latency.png"):
        assert (out / name).stat().st_size > 0
    assert "bit-exact int8 scores: 5/5" in (out / "summary.md").read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_board_with_another_model_is_refused(
    kind: str, run: Path, other_run: Path, synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with boards(kind, other_run) as urls:
        assert _eval(run, urls, tmp_path / "report", synthetic_corpus, "--limit", "2") == 2
    err = capsys.readouterr().err
    assert sha256((run / MODEL_FILE).read_bytes()) in err
    assert sha256((other_run / MODEL_FILE).read_bytes()) in err
    assert not read_results(tmp_path / "report" / RESULTS)  # nothing was scored


@pytest.mark.parametrize("kind", KINDS)
def test_resume_finishes_a_cut_off_run_without_repeating_a_clip(
    kind: str, run: Path, synthetic_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    with boards(kind, run) as urls:
        assert _eval(run, urls, out, synthetic_corpus, "--limit", "6") == 0
        complete = read_results(out / RESULTS)
        lines = (out / RESULTS).read_text().splitlines()
        (out / RESULTS).write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # killed while writing clip 3
        assert eval_on_device.main(["--resume", str(out), "--data", str(synthetic_corpus), "--quiet", "--port", urls[0]]) == 0
    lines = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]  # the half line is gone
    assert sorted(r["clip"] for r in lines) == sorted(complete)  # each clip exactly once, none lost
    resumed = read_results(out / RESULTS)
    assert {k: r["scores"] for k, r in resumed.items()} == {k: r["scores"] for k, r in complete.items()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == {"planned": 6, "ok": 6, "failed": 0, "missing": 0}
    assert summary["throughput"]["clips"] == 6  # the 2 clips kept from the first session and the 4 redone


@pytest.mark.parametrize("kind", KINDS)
def test_resume_with_nothing_left_leaves_the_report_as_it_was(
    kind: str, run: Path, synthetic_corpus: Path, tmp_path: Path
) -> None:
    """Rerunning a finished evaluation (as ser-main does) needs no board and changes no byte of its report."""
    out = tmp_path / "report"
    resume = ["--resume", str(out), "--data", str(synthetic_corpus), "--quiet"]
    with boards(kind, run) as urls:
        assert _eval(run, urls, out, synthetic_corpus, "--limit", "3") == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        assert eval_on_device.main([*resume, "--port", urls[0]]) == 0
    assert eval_on_device.main([*resume, "--port", "/dev/ttyNO-SUCH-PORT"]) == 0  # no board is even opened
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    summary = json.loads(before["summary.json"])
    assert summary["throughput"]["clips"] == 3 and summary["throughput"]["clips_per_s"] > 0
    assert list(summary["boards"]) == urls and summary["boards"][urls[0]]["scored_clips"] == 3


def _log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines() if line.endswith("}")]


def test_throughput_of_a_killed_and_resumed_run_counts_every_clip_once(run: Path, synthetic_corpus: Path, tmp_path: Path) -> None:
    """A run killed outright (no chance to save anything) and resumed: the throughput covers all 8 clips,
    each once, over the time of both sessions."""
    out = tmp_path / "report"
    with boards("sim", run) as urls:
        cmd = [sys.executable, "host/eval_on_device.py", "--run", str(run), "--out", str(out), "--port", urls[0]]
        cmd += ["--data", str(synthetic_corpus), "--limit", "8", "--quiet"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(read_results(out / RESULTS)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.kill()
        _, err = proc.communicate(timeout=60)
        assert 3 <= len(read_results(out / RESULTS)) < 8, err
        assert eval_on_device.main(["--resume", str(out), "--port", urls[0], "--data", str(synthetic_corpus), "--quiet"]) == 0
    lines = _log_lines(out)
    assert len(read_results(out / RESULTS)) == 8 and {r["session"] for r in lines} == {0, 1}
    t = json.loads((out / "summary.json").read_text())["throughput"]
    assert t["clips"] == 8 and t["sessions"] == 2
    first, second = (max(r["elapsed_s"] for r in lines if r["session"] == k) for k in (0, 1))
    assert t["seconds"] == pytest.approx(first + second)
    assert t["clips_per_s"] == pytest.approx(8 / t["seconds"])
    assert "- 8 clips in" in (out / "summary.md").read_text()


def test_a_board_that_evaluated_nothing_gets_no_entry(run: Path, synthetic_corpus: Path, tmp_path: Path) -> None:
    """A clip whose audio was missing is redone on resume by one of two fresh boards: the other one
    evaluated nothing and is named neither in the report nor in the evaluation's description."""
    corpus = shutil.copytree(synthetic_corpus, tmp_path / "corpus")
    clips = [c.path for c in select(run, "test", 4)]
    hidden = corpus / clips[0]
    hidden.rename(hidden.with_suffix(".away"))
    out = tmp_path / "report"
    with boards("sim", run, n=3) as (first, *fresh):
        assert _eval(run, [first], out, corpus, "--limit", "4") == 1  # one clip failed
        hidden.with_suffix(".away").rename(hidden)
        argv = ["--resume", str(out), "--data", str(corpus), "--quiet"]
        assert eval_on_device.main([*argv, "--port", fresh[0], "--port", fresh[1]]) == 0
    records = read_results(out / RESULTS)
    assert all(r["status"] == "ok" for r in records.values())
    redone_on = records[clips[0]]["board"]
    assert redone_on in fresh
    summary = json.loads((out / "summary.json").read_text())
    assert {url: b["scored_clips"] for url, b in summary["boards"].items()} == {first: 3, redone_on: 1}
    assert set(json.loads((out / "evaluation.json").read_text())["boards"]) == {first, redone_on}
    assert summary["throughput"]["clips"] == 4 and summary["throughput"]["sessions"] == 2
    md = (out / "summary.md").read_text()
    assert next(u for u in fresh if u != redone_on) not in md and "over 2 sessions" in md


@pytest.mark.skipif(not DEPS, reason="needs the emulated board: set SER_DEPS_DIR (README: Third-party sources)")
def test_resume_refuses_an_emulated_board_whose_firmware_changed(
    run: Path, synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Cycle counts of two firmwares must not mix in one report: the evaluation records the ELF it ran."""
    out = tmp_path / "report"
    argv = ["--data", str(synthetic_corpus), "--quiet", "--board", "qemu", "--boards", "1"]
    assert eval_on_device.main(["--run", str(run), "--out", str(out), "--limit", "2", *argv]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert eval_on_device.main(["--resume", str(out), *argv]) == 0  # as ser-main reruns: same firmware, nothing to do
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    meta = json.loads((out / "evaluation.json").read_text())
    assert len(meta["firmware"]["elf_sha256"]) == 64
    assert meta["boards"][next(iter(meta["boards"]))]["receive_path"].startswith("Ethernet")
    meta["firmware"]["elf_sha256"] = "0" * 64  # as if the firmware had been rebuilt since
    (out / "evaluation.json").write_text(json.dumps(meta))
    assert eval_on_device.main(["--resume", str(out), *argv]) == 2
    assert "firmware changed since this evaluation started" in capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_two_boards_share_the_clips(kind: str, run: Path, synthetic_corpus: Path, tmp_path: Path) -> None:
    with boards(kind, run, n=2) as urls:
        assert _eval(run, urls, tmp_path / "two", synthetic_corpus, "--limit", "8") == 0
    records = read_results(tmp_path / "two" / RESULTS)
    assert len(records) == 8 and {r["board"] for r in records.values()} == set(urls)
    expected = _host_answers(run, synthetic_corpus, list(records))
    assert {k: r["scores"] for k, r in records.items()} == expected


def test_faulty_link_gives_the_clean_results(run: Path, synthetic_corpus: Path, tmp_path: Path) -> None:
    """Through a relay that drops, flips and duplicates bytes, cuts the link and resets the board, the
    evaluation ends with the clean run's results: no clip lost, none counted twice."""
    plan = FaultPlan(
        seed=5,
        to_board=ByteFaults(drop=3e-5, flip=3e-5, duplicate=3e-5),
        to_tool=ByteFaults(drop=5e-4, flip=5e-4, duplicate=5e-4),
        cut_every=41,
        reset_every=37,
    )
    fast = ["--timeout", str(INTER_BYTE_TIMEOUT + 0.2)]  # local links answer in ms; above the parser's drop time
    with boards("sim", run) as urls:
        assert _eval(run, urls, tmp_path / "clean", synthetic_corpus, "--limit", "6") == 0
        with FaultRelay(urls[0], plan) as relay:
            assert _eval(run, [relay.url], tmp_path / "faulty", synthetic_corpus, "--limit", "6", "--attempts", "8", *fast) == 0
    assert relay.counts["cut"] > 0 and relay.counts["reset"] > 0
    assert sum(n for key, n in relay.counts.items() if isinstance(key, tuple)) > 3
    clean, faulty = read_results(tmp_path / "clean" / RESULTS), read_results(tmp_path / "faulty" / RESULTS)
    assert {k: r["scores"] for k, r in faulty.items()} == {k: r["scores"] for k, r in clean.items()}
    lines = (tmp_path / "faulty" / RESULTS).read_text().splitlines()
    assert len(lines) == 6  # one line per clip: nothing counted twice
    assert any(r["attempts"] > 1 for r in faulty.values())  # the faults were felt


def _default_sigint() -> None:
    """A shell's background job (`cmd &`) ignores SIGINT and its children inherit that: give Ctrl-C back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_every_finished_clip(run: Path, synthetic_corpus: Path, tmp_path: Path) -> None:
    """SIGINT mid-run (a real process, a real signal): the finished clips stay, resume does the rest."""
    out = tmp_path / "report"
    with boards("sim", run) as urls:
        cmd = [sys.executable, "host/eval_on_device.py", "--run", str(run), "--out", str(out), "--port", urls[0]]
        cmd += ["--data", str(synthetic_corpus), "--limit", "8", "--quiet"]
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
        )
        deadline = time.monotonic() + 120
        while len(read_results(out / RESULTS)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and f"--resume {out}" in err
        done = read_results(out / RESULTS)
        assert 2 <= len(done) < 8
        assert eval_on_device.main(["--resume", str(out), "--port", urls[0], "--data", str(synthetic_corpus), "--quiet"]) == 0
    assert len(read_results(out / RESULTS)) == 8 and len((out / RESULTS).read_text().splitlines()) == 8


def test_unusable_ports_get_clear_messages(run: Path, synthetic_corpus: Path, tmp_path: Path, capsys) -> None:
    args = ["--run", str(run), "--data", str(synthetic_corpus), "--limit", "1", "--quiet", "--timeout", "0.2"]
    assert eval_on_device.main([*args, "--out", str(tmp_path / "a"), "--port", "/dev/ttyNO-SUCH-PORT"]) == 2
    assert "No such port" in capsys.readouterr().err

    controller, device = os.openpty()  # a real serial device with nothing answering on it
    try:
        path = os.ttyname(device)
        assert eval_on_device.main([*args, "--out", str(tmp_path / "b"), "--port", path]) == 2
        err = capsys.readouterr().err
        assert "likely silent board" in err and "baud rate" not in err  # nothing at all arrived: not a baud-rate problem
        with serial.Serial(path, exclusive=True):  # another program holds the port
            assert eval_on_device.main([*args, "--out", str(tmp_path / "c"), "--port", path]) == 2
        assert "in use" in capsys.readouterr().err
    finally:
        os.close(controller)
        os.close(device)
