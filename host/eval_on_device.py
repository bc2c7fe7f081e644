"""Evaluate a trained run on a board over serial: accuracy, agreement with the host, latency, throughput.

    python host/eval_on_device.py --run runs/spectrogram_resnet-paper --board qemu
    python host/eval_on_device.py --run runs/spectrogram_resnet-paper --port /dev/ttyACM0
    ser-eval --run ... --port socket://127.0.0.1:4444 --port socket://127.0.0.1:4445   (clips shared out)
    ser-eval --resume runs/spectrogram_resnet-paper/board-eval-20261125-101500 --board qemu

Each clip of the run's test part is streamed as 16 kHz int16 PCM; the board runs the front end and the
int8 model and answers with its scores and cycle counts. The host computes the TFLM reference for the
same clip and scores the board against it. Results go to a timestamped report folder as they arrive.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python host/eval_on_device.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from tqdm.auto import tqdm

from convert.tflite_file import MODEL_FILE, ModelFileError, io_specs, model_head, sha256
from host.board import DEFAULT_BAUD
from host.clips import EvalClip, board_pcm, select
from host.eval_report import RESULTS, RUN_INFO, ResultsLog, current_summary, forget_idle, read_results, write_reports
from host.protocol import NormState
from host.reference import HostReference, audio_frontend, per_voice, to_wire
from host.session import BoardSession, ClipFailed, FatalBoardError
from train.corpus import CorpusError, resolve_root
from train.embedding_c import SCORE_SCALE
from train.speaker_norm import SPEAKER_NORM_FILE, load_speaker_sums, scoring_order
from train.splits import load_manifest

EMULATED_DEFAULT = "qemu-mps2-an386"


class EvalError(RuntimeError):
    """A problem the user must fix before the evaluation can run; the message says what to do."""


class FirmwareChanged(EvalError):
    """--resume on an emulated board whose firmware is no longer the one the evaluation started with."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ser-eval",
        description=__doc__.split("\n\n")[0],
        epilog="Reports: results.jsonl (a line per clip), summary.json, summary.md, confusion.png, latency.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--run", type=Path, help="run folder (model_int8.tflite, manifest.json); read from --resume's folder if omitted"
    )
    where = p.add_argument_group("board (one of)")
    where.add_argument(
        "--port",
        action="append",
        default=[],
        help="pyserial URL of a board: /dev/ttyACM0, COM5, socket://host:port, "
        "rfc2217://...; repeat for several boards (the clips are shared out)",
    )
    where.add_argument(
        "--board",
        help=f"'qemu' (= {EMULATED_DEFAULT}) or an emulated board name: build the firmware if needed and start it here",
    )
    p.add_argument("--boards", type=int, default=2, help="how many emulated boards to run in parallel with --board (default 2)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"line rate for real serial ports (default {DEFAULT_BAUD})")
    p.add_argument("--split", default="test", help="'test' (the run's test clips), 'all', or a manifest file (its test clips)")
    p.add_argument("--limit", type=int, help="evaluate only N clips, spread over the classes")
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--out", type=Path, help="report folder (default: <run>/board-eval-<timestamp>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue a cut-off evaluation in its report folder")
    p.add_argument("--attempts", type=int, default=4, help="tries per clip before it is recorded as failed (default 4)")
    p.add_argument(
        "--uart-only",
        action="store_true",
        help="send on the emulated board's UART too, not its faster Ethernet path (firmware/PROTOCOL.md 8)",
    )
    p.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for a reply before sending a frame again (default 3)"
    )
    p.add_argument("--deps-dir", help="local copies of TFLM/CMSIS sources for building the emulated board ($SER_DEPS_DIR)")
    p.add_argument(
        "--new-voices",
        action="store_true",
        help="per-speaker normalisation: score every voice as a new one (statistics of its clips before each clip), "
        "even a voice the model was trained on; default: a trained-on voice starts each clip from the statistics of "
        "its training clips (a board that knows its user)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if bool(args.port) == bool(args.board):
        p.error("give the board: --port URL (a flashed board or a running emulator) or --board qemu (started here)")
    if args.run is None and args.resume is None:
        p.error("give --run RUN_FOLDER (or --resume REPORT_FOLDER)")
    return args


# ---- what to evaluate ----


def plan(args: argparse.Namespace) -> tuple[Path, dict]:
    """The report folder and its fixed description (run, model hash, clip list); reused as is on --resume."""
    if args.resume:
        info_path = args.resume / RUN_INFO
        if not info_path.exists():
            raise EvalError(f"{args.resume} is not an evaluation folder (no {RUN_INFO})")
        meta = json.loads(info_path.read_text())
        run = Path(args.run or meta["run"])
        model = run / MODEL_FILE
        if not model.exists() or sha256(model.read_bytes()) != meta["model_sha256"]:
            raise EvalError(f"{model} is not the model this evaluation started with (sha256 {meta['model_sha256'][:12]}...)")
        return args.resume, meta
    run = args.run
    model = run / MODEL_FILE
    if not model.exists():
        raise EvalError(f"{model} not found: convert the run first (ser-convert {run})")
    tflite = model.read_bytes()
    clips = select(run, args.split, args.limit)
    _, out_spec = io_specs(tflite)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or run / f"board-eval-{stamp}"
    meta = {
        "run": str(run),
        "model_sha256": sha256(tflite),
        "split": args.split if args.limit is None else f"{args.split} (limit {args.limit})",
        "clips": [c.path for c in clips],
        "clip_emotions": {c.path: c.emotion for c in clips},
        "output": {"scale": out_spec.scale, "zero_point": out_spec.zero_point}
        if model_head(tflite) is None
        else {"scale": 1 / SCORE_SCALE, "zero_point": 0},  # the embedding classifier's scores
        "created": stamp,
        "boards": {},
    }
    if (out_dir / RESULTS).exists():
        raise EvalError(f"{out_dir} already holds results: use --resume {out_dir} to continue it, or another --out")
    if audio_frontend(tflite).speaker_norm != "off":  # fixed with the evaluation: a resume keeps these states
        meta["known_voices"] = {} if args.new_voices else known_voices(run, resolve_root(args.data), tflite)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUN_INFO).write_text(json.dumps(meta, indent=1) + "\n")
    return out_dir, meta


# ---- the boards ----


def emulated_firmware(args: argparse.Namespace, tflite: bytes, meta: dict) -> tuple[str, Path]:
    """The emulated board's name and ELF, built if needed (``--board``).

    The firmware is recorded in ``meta``: resuming with other firmware (the kernels or the app changed
    since) would mix two firmwares' cycle counts in one report, so it is refused.
    """
    from host import firmware, qemu

    name = EMULATED_DEFAULT if args.board == "qemu" else args.board
    if name not in qemu.MACHINES:
        raise EvalError(
            f"--board {args.board}: emulated boards are qemu, {', '.join(qemu.MACHINES)}; flash a real board and use --port"
        )
    try:
        elf = firmware.build(name, tflite, args.deps_dir, quiet=args.quiet)
    except firmware.FirmwareUnavailable as exc:
        raise EvalError(f"cannot build the emulated board: {exc}") from None
    built = {"board": name, "elf_sha256": sha256(elf.read_bytes())}
    before = meta.get("firmware") or ({"elf_sha256": "not recorded"} if meta["boards"] else built)
    if before != built:
        raise FirmwareChanged(
            f"the {name} firmware changed since this evaluation started (ELF sha256 "
            f"{before['elf_sha256'][:12]} then, {built['elf_sha256'][:12]} now): "
            "start a new evaluation (--run RUN --out NEW_FOLDER) rather than mix two firmwares in one report"
        )
    meta["firmware"] = built
    return name, elf


@contextlib.contextmanager
def board_urls(args: argparse.Namespace, tflite: bytes, meta: dict) -> Iterator[list[str]]:
    """The ports to use: the given ones, or emulated boards started here and stopped on exit (Ctrl-C too)."""
    if args.port:
        yield args.port
        return
    from host import qemu

    name, elf = emulated_firmware(args, tflite, meta)
    boards = []
    try:
        for _ in range(max(1, args.boards)):
            boards.append(qemu.start(name, elf))
        yield [b.url for b in boards]
    finally:
        for b in boards:
            b.stop()


# ---- the evaluation ----


class Progress:
    """Running scores for the progress bar."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar = tqdm(total=total, unit="clip", desc="on board", disable=quiet, dynamic_ncols=True)
        self.correct = self.scored = self.exact = self.failed = 0
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self._lock:
            if record["status"] == "ok":
                self.scored += 1
                self.correct += record["predicted"] == record["label"]
                self.exact += record["bit_exact"]
            else:
                self.failed += 1
            self.bar.set_postfix(
                acc=f"{self.correct / max(1, self.scored):.1%}", exact=f"{self.exact}/{self.scored}", failed=self.failed
            )
            self.bar.update(1)


def _record(clip: EvalClip, url: str) -> dict:
    return {"clip": clip.path, "emotion": clip.emotion, "label": clip.label, "board": url}


def evaluate_clip(
    session: BoardSession, reference: HostReference, root: Path, clip: EvalClip, known: NormState | None = None
) -> dict:
    """One clip: its record for results.jsonl, ``status`` ok or failed (never a guess).

    With per-speaker normalisation the reference and the board both standardise the clip by the
    statistics of the voice's clips before it; the record says how many (``norm_clips``). A voice
    the model was trained on (``known``: its training clips' state) starts every clip from that
    state instead (``voice`` known), loaded onto the board before the clip.
    """
    record = _record(clip, session.url)
    try:
        pcm = board_pcm(root, clip, reference.cfg)
    except (CorpusError, OSError, ValueError) as exc:  # missing or corrupt audio: the clip fails, the run goes on
        return record | {"status": "failed", "error": f"audio: {exc}", "attempts": 0}
    if known is not None:
        reference.load_norm(known)
        session.norm_unsure = True  # the board holds the last clip's sums too: load the voice's state again
    norm = reference.norm_state() if reference.speaker_norm else None
    embed = reference.embed_state() if reference.embedding else None
    if reference.stateful:
        record["norm_clips"] = norm.clips if norm is not None else embed.clips
        record["voice"] = "new" if known is None else "known"
    host_scores = reference(pcm)
    host_class = reference.last_class
    try:
        outcome = session.classify(pcm, norm=norm, embed=embed)
    except ClipFailed as exc:
        return record | {
            "status": "failed",
            "error": str(exc),
            "attempts": len(exc.errors),
            "host_scores": host_scores.tolist(),
        }
    result = outcome.result
    scores = np.array(result.scores, dtype=np.int8)
    if len(scores) != len(host_scores):
        return record | {
            "status": "failed",
            "error": f"board sent {len(scores)} scores, model has {len(host_scores)}",
            "attempts": outcome.attempts,
        }
    return record | {
        "status": "ok",
        "predicted": int(result.class_index),
        "host_predicted": host_class,
        "scores": scores.tolist(),
        "host_scores": host_scores.tolist(),
        "bit_exact": bool(np.array_equal(scores, host_scores)) and int(result.class_index) == host_class,
        "max_lsb_diff": int(np.abs(scores.astype(int) - host_scores.astype(int)).max()),
        "frontend_cycles": int(result.frontend_cycles),
        "invoke_cycles": int(result.invoke_cycles),
        "attempts": outcome.attempts,
        "retry_reasons": outcome.errors,
        "seconds": round(outcome.seconds, 4),
        "bytes_sent": outcome.bytes_sent,
        "bytes_received": outcome.bytes_received,
        "pcm_samples": len(pcm),
    }


Stream = list[tuple[EvalClip, bool]]  # clips one board takes in this order; True: done already (host only)


def streams(clips: list[EvalClip], done: set[str], stateful: bool) -> list[Stream]:
    """What each board takes at a time: one clip, or with per-speaker statistics (``stateful``) one voice's clips
    in the order its statistics grow (``train.speaker_norm.scoring_order``, as training scored it); its clips
    done already are replayed on the host only, to rebuild the statistics the next clip needs."""
    if not stateful:
        return [[(c, False)] for c in clips if c.path not in done]
    out = []
    for speaker in dict.fromkeys(speaker_of(c) for c in clips):
        mine = [c for c in clips if speaker_of(c) == speaker]
        stream = [(mine[i], mine[i].path in done) for i in scoring_order(len(mine))]
        if not all(d for _, d in stream):
            out.append(stream)
    return out


def speaker_of(clip: EvalClip) -> str:
    return clip.path.split("/", 1)[0]  # <speaker>/<emotion>/<n>.wav


def known_voices(run: Path, root: Path, tflite: bytes) -> dict[str, dict]:
    """Each voice the run's model was trained on, as the board's NORM state (JSON): the sums over that voice's
    clips in the run's training part (its validation part for a held-out validation speaker), which training
    saved beside the statistics it standardised the voice by (``speaker_norm.json``). A run saved before the
    sums were kept has them rebuilt from those clips. No such file (a model from elsewhere): none known."""
    trained = run / SPEAKER_NORM_FILE
    if not trained.exists():
        return {}
    saved = load_speaker_sums(trained)
    states = {speaker: dataclasses.asdict(to_wire(sums)) for speaker, sums in saved.items() if sums is not None}
    missing = [speaker for speaker, sums in saved.items() if sums is None]
    if missing:
        states |= rebuilt_voices(run, root, tflite, missing)
    return states


def rebuilt_voices(run: Path, root: Path, tflite: bytes, speakers: list[str]) -> dict[str, dict]:
    """Known voices' NORM states from their training clips, through the host's front end (older runs)."""
    manifest = load_manifest(run / "manifest.json")
    reference = HostReference(tflite)
    states = {}
    for speaker in speakers:
        mine = [c for c in manifest["clips"] if c["speaker"] == speaker]
        heard = [c for c in mine if c["role"] == "train"] or [c for c in mine if c["role"] == "val"]
        reference.reset_voice()
        for c in heard:
            try:
                pcm = board_pcm(root, EvalClip(c["path"], c["emotion"]), reference.cfg)
            except (CorpusError, OSError, ValueError) as exc:
                raise EvalError(
                    f"voice {speaker}: its training clip {c['path']} cannot be read ({exc}), so its training statistics "
                    "cannot be rebuilt: restore the clip, or score every voice as a new one with --new-voices"
                ) from exc
            reference.model_input(pcm)
        states[speaker] = dataclasses.asdict(reference.norm_state())
    return states


def check_statistics(session: BoardSession, reference: HostReference, speaker: str) -> dict:
    """After a voice's clips: the board's statistics (log-mel, embedding or both) against the host's (the same bits)."""
    pairs = []
    if reference.speaker_norm:
        pairs.append((session.read_norm(), reference.norm_state()))
    if reference.embedding:
        pairs.append((session.read_embed(), reference.embed_state()))
    return {
        "clip": f"statistics:{speaker}",
        "status": "statistics",
        "speaker": speaker,
        "board": session.url,
        "bit_exact": all(board == host for board, host in pairs),
        "clips": pairs[0][1].clips,
        "board_clips": pairs[0][0].clips,
    }


def run_boards(
    urls: list[str],
    tflite: bytes,
    root: Path,
    todo: list[Stream],
    log: ResultsLog,
    meta: dict,
    args: argparse.Namespace,
) -> None:
    """Share ``todo`` among the boards; every answer is logged as it comes, with this session's number in
    ``meta["sessions"]`` and the time since it started (the report's throughput figures)."""
    known = {
        speaker: NormState(s["mode"], s["clips"], s["frames"], tuple(s["sum"]), tuple(s["squares"]))
        for speaker, s in meta.get("known_voices", {}).items()
    }
    work: queue.Queue[Stream] = queue.Queue()
    for stream in todo:
        work.put(stream)
    progress = Progress(sum(not d for stream in todo for _, d in stream), args.quiet)
    fatal: list[BaseException] = []
    sessions = [BoardSession(url, tflite, args.baud, args.attempts, args.timeout, fast_path=not args.uart_only) for url in urls]
    stop = threading.Event()
    number = len(meta.setdefault("sessions", []))

    def handshake(session: BoardSession) -> None:
        info = session.connect()
        meta["boards"][session.url] = {
            "board": info.board,
            "core_clock_hz": info.core_clock_hz,
            "cycle_counter": info.cycle_counter,
            "arena_size": info.arena_size,
            "arena_used": info.arena_used,
            "build_id": info.build_id,
            "input": str(info.input),
            "receive_path": "Ethernet (PROTOCOL.md 8)" if session.rx_path == 1 else "UART",
            "labels": list(info.labels),
        }

    def worker(session: BoardSession) -> None:
        try:
            reference = HostReference(tflite)
            while not stop.is_set():
                try:
                    stream = work.get_nowait()
                except queue.Empty:
                    return
                voice = known.get(speaker_of(stream[0][0]))
                if reference.stateful:
                    reference.reset_voice()  # a new voice
                    session.norm_unsure = True  # the board still holds the last one's
                for clip, done in stream:
                    if stop.is_set():
                        return
                    if done:  # heard before this evaluation was cut off: only its statistics are needed
                        with contextlib.suppress(CorpusError, OSError, ValueError):
                            reference(board_pcm(root, clip, reference.cfg))
                        continue
                    record = evaluate_clip(session, reference, root, clip, voice)
                    log.append(record | {"session": number, "elapsed_s": round(time.monotonic() - start, 4)})
                    progress.add(record)
                if reference.stateful:
                    check = check_statistics(session, reference, speaker_of(stream[0][0]))
                    log.append(check | {"session": number, "elapsed_s": round(time.monotonic() - start, 4)})
        except BaseException as exc:
            fatal.append(exc)
            stop.set()
        finally:
            session.close()

    real_ports = [u for u in urls if "://" not in u or u.startswith("rfc2217")]
    try:
        for session in sessions:  # all handshakes first: a wrong model is refused before any clip
            handshake(session)
        fast = any(s.rx_path == 1 for s in sessions)
        meta["sessions"].append(
            {
                "boards": len(urls),
                "sample_rate": audio_frontend(tflite).sample_rate,
                "line_rate": f"{args.baud} baud = {args.baud / 10 / 1024:.1f} KiB/s per port"
                if real_ports
                else "emulated board: host-to-board bytes as Ethernet packets, replies on its UART (PROTOCOL.md 8)"
                if fast
                else "emulated UART on a local socket (no baud rate; QEMU delivers one byte per main-loop round)",
            }
        )
        (log.path.parent / RUN_INFO).write_text(json.dumps(meta, indent=1) + "\n")  # records name these boards
        start = time.monotonic()
        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        stop.set()
        progress.bar.close()
        for session in sessions:  # what each board's link went through, for the report
            meta["boards"].setdefault(session.url, {})["link"] = session.link_report()
        forget_idle(meta, read_results(log.path))
    if fatal:
        raise fatal[0]


def evaluate(args: argparse.Namespace) -> tuple[Path, dict]:
    """Run (or resume) one evaluation; returns the report folder and its summary. A resume with nothing
    left to do starts no board and leaves the report as it is.

    Raises ``EvalError``/``FatalBoardError``/``CorpusError``/``ModelFileError`` for what the user must fix,
    and ``KeyboardInterrupt`` after saving the reports of the clips done so far.
    """
    if args.run and args.split == "all" and not args.new_voices and (args.run / SPEAKER_NORM_FILE).exists():
        raise EvalError("--split all scores training clips too, whose audio makes a known voice's statistics: add --new-voices")
    out_dir, meta = plan(args)
    run = Path(meta["run"])
    tflite = (run / MODEL_FILE).read_bytes()
    root = resolve_root(args.data)
    done = {k for k, r in read_results(out_dir / RESULTS).items() if r.get("status") == "ok"}
    clips = [EvalClip(c, meta["clip_emotions"][c]) for c in meta["clips"]]
    todo = streams(clips, done, per_voice(tflite))
    left = sum(not d for stream in todo for _, d in stream)
    print(f"{len(meta['clips'])} clips, {len(meta['clips']) - left} already done, {left} to go; reports in {out_dir}")
    if not todo and (summary := current_summary(out_dir, meta)):  # no board needed: the report stands as it is
        if args.board:  # but a report of other firmware than today's is refused all the same
            emulated_firmware(args, tflite, meta)
        return out_dir, summary
    log = ResultsLog(out_dir / RESULTS)
    try:
        with board_urls(args, tflite, meta) as urls:
            run_boards(urls, tflite, root, todo, log, meta, args)
    except KeyboardInterrupt:
        write_reports(out_dir, meta)
        print(
            f"\ninterrupted: finished clips are in {out_dir / RESULTS}; continue with --resume {out_dir}",
            file=sys.stderr,
        )
        raise
    finally:
        (out_dir / RUN_INFO).write_text(json.dumps(meta, indent=1) + "\n")
    return out_dir, write_reports(out_dir, meta)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out_dir, summary = evaluate(args)
    except (EvalError, FatalBoardError, CorpusError, ModelFileError) as exc:
        print(f"ser-eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print_summary(summary, out_dir)
    return 0 if summary["clips"]["failed"] == 0 else 1


def print_summary(s: dict, out_dir: Path) -> None:
    c = s["clips"]
    if "board" in s:
        a = s["agreement"]
        inv = s["latency"]["invoke"]
        fe = s["latency"]["frontend"]
        print(
            f"board accuracy {s['board']['accuracy']:.2%} (host TFLM {s['host_tflm']['accuracy']:.2%}) on {c['ok']} clips; "
            f"bit-exact with host {a['bit_exact_clips']}/{a['clips']}, max {a['max_lsb_diff']} LSB; "
            f"front end {fe['cycles']['mean'] / 1e6:.2f} M, Invoke {inv['cycles']['mean'] / 1e6:.2f} M cycles per clip"
        )
    if norm := s.get("speaker_norm"):
        exact = norm["statistics_bit_exact"]
        print(
            f"per-speaker statistics bit-exact with host on {sum(exact.values())}/{len(exact)} voices; accuracy by clips "
            "of the voice heard before: "
            + (", ".join(f"{k}: {v['accuracy']:.1%}" for k, v in norm["accuracy_by_clips_heard"].items()) or "-")
        )
        if known := norm.get("known_voices"):
            trained_on = f"{known['accuracy']:.1%} on {known['clips']} clips"
            print(f"voices the model was trained on, each clip from their training statistics: {trained_on}")
    if c["failed"]:
        print(f"{c['failed']} clips failed (listed in summary.md); rerun them with --resume {out_dir}")
    print(f"report: {out_dir / 'summary.md'}")


if __name__ == "__main__":
    sys.exit(main())
