"""Benchmark: how the host copes with a damaged serial line, by the per-byte error rate.

    python benchmarks/link_fault_benchmark.py --board sim --clips 20
    python benchmarks/link_fault_benchmark.py --board qemu --deps-dir $SER_DEPS_DIR --rates 0 2e-4 1e-3 --reset-every 250
    python benchmarks/link_fault_benchmark.py --board qemu --run runs/NAME --data $CASIA_ROOT --clips 40

For each rate p a fresh board is started and the same clips go through ``host/fault_relay.py``, which
drops and flips p of the bytes each way and duplicates p/2 (optionally it also cuts the link and
resets the board every n frames). The client is ``BoardSession`` with ser-eval's defaults (4 attempts
per clip, 3 s reply timeout), on the board's UART: the relay sits on the serial line. The table says
how many clips finished without --resume, whether their scores equal the clean run's, the mean time per
clip, the link's counts (CRC/framing errors, resyncs, commands the board got damaged, silent waits)
and the smallest chunk the host fell back to. Without --run it streams synthetic 1 s clips through
the small model of the tests (tests/boards_under_test.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from host import qemu
from host.fault_relay import ByteFaults, FaultPlan, FaultRelay
from host.session import BoardSession, ClipFailed
from host.sim_board import SimulatedBoard

QEMU_BOARD = "qemu-mps2-an386"


def clips_and_model(args: argparse.Namespace) -> tuple[bytes, list[np.ndarray]]:
    """The model and the clips to stream: a run's test clips from CASIA, or the tests' synthetic ones."""
    if args.run is None:
        from tests.boards_under_test import clips, small_model

        return small_model(), clips(args.clips)
    from convert.tflite_file import MODEL_FILE
    from host.clips import board_pcm, select
    from host.reference import audio_frontend
    from train.corpus import resolve_root

    tflite = (args.run / MODEL_FILE).read_bytes()
    cfg, root = audio_frontend(tflite), resolve_root(args.data)
    return tflite, [board_pcm(root, clip, cfg) for clip in select(args.run, "test", args.clips)]


@contextlib.contextmanager
def board(kind: str, tflite: bytes, deps: str | None) -> Iterator[str]:
    """A fresh board serving ``tflite``; yields the URL of its UART."""
    if kind == "sim":
        with SimulatedBoard(tflite) as sim:
            yield sim.url
        return
    from host.firmware import build

    with qemu.running(QEMU_BOARD, build(QEMU_BOARD, tflite, deps)) as emu:
        yield f"socket://127.0.0.1:{emu.port}"


def run_rate(rate: float, tflite: bytes, pcms: list[np.ndarray], args: argparse.Namespace) -> dict:
    faults = ByteFaults(drop=rate, flip=rate, duplicate=rate / 2)
    plan = FaultPlan(args.seed, faults, faults, cut_every=args.cut_every, reset_every=args.reset_every)
    scores: list[tuple[int, ...] | None] = []
    seconds: list[float] = []
    with board(args.board, tflite, args.deps_dir) as url, FaultRelay(url, plan) as relay:
        session = BoardSession(relay.url, tflite, attempts=args.attempts, timeout=args.timeout)
        start = time.monotonic()
        try:
            session.connect()
            handshake = time.monotonic() - start
            for pcm in pcms:
                try:
                    outcome = session.classify(pcm)
                except ClipFailed as exc:
                    print(f"  p={rate:g}: clip failed: {exc}", file=sys.stderr)
                    scores.append(None)
                    continue
                scores.append(outcome.result.scores)
                seconds.append(outcome.seconds)
        finally:
            session.close()
        injected = sum(n for key, n in relay.counts.items() if isinstance(key, tuple))
    s = session.stats
    return {
        "rate": rate,
        "scores": scores,
        "handshake_s": handshake,
        "s_per_clip": float(np.mean(seconds)) if seconds else float("nan"),
        "injected": injected,
        "stats": s,
        "diagnosis": session.diagnosis().split(":")[0],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--board", choices=("sim", "qemu"), default="sim", help="simulated board on a pty, or the QEMU board's UART")
    p.add_argument("--rates", type=float, nargs="+", default=[0, 1e-4, 2e-4, 1e-3, 5e-3], help="per-byte drop (= flip) rates")
    p.add_argument("--clips", type=int, default=20, help="clips per rate (default 20)")
    p.add_argument("--run", type=Path, help="a converted run: its model and test clips (needs --data or $CASIA_ROOT)")
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--cut-every", type=int, default=0, help="cut the link after every n-th frame from the host (0: never)")
    p.add_argument("--reset-every", type=int, default=0, help="reset the board after every n-th frame from the host (0: never)")
    p.add_argument("--attempts", type=int, default=4, help="tries per clip, as ser-eval --attempts (default 4)")
    p.add_argument("--timeout", type=float, default=3.0, help="reply timeout in s, as ser-eval --timeout (default 3)")
    p.add_argument("--seed", type=int, default=1, help="the relay's fault seed")
    p.add_argument("--deps-dir", default=os.environ.get("SER_DEPS_DIR"), help="TFLM/CMSIS sources ($SER_DEPS_DIR)")
    args = p.parse_args()
    if args.board == "qemu" and not args.deps_dir:
        p.error("--board qemu builds the firmware: give --deps-dir or set SER_DEPS_DIR")
    tflite, pcms = clips_and_model(args)
    rows = [
        "| drop = flip rate | finished without resume | same as clean | s per clip | handshake s | faults injected "
        "| CRC/framing errors | resyncs | refused by board | timeouts | resets | reopenings | smallest chunk | diagnosis |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    clean: list | None = None
    for rate in args.rates:
        r = run_rate(rate, tflite, pcms, args)
        done = [x for x in r["scores"] if x is not None]
        if clean is None:
            clean = r["scores"]
        same = sum(a is not None and a == b for a, b in zip(r["scores"], clean, strict=True))
        s = r["stats"]
        row = (
            f"| {rate:g} | {len(done)}/{len(pcms)} ({len(done) / len(pcms):.0%}) | {same}/{len(done)} | {r['s_per_clip']:.2f} "
            f"| {r['handshake_s']:.1f} | {r['injected']} | {s.crc_errors} | {s.resyncs} | {s.refusals} | {s.timeouts} "
            f"| {s.resets} | {s.reopens} | {s.smallest_chunk or '-'} | {r['diagnosis']} |"
        )
        rows.append(row)
        print(row, flush=True)
    print(f"\n{args.board} board, {len(pcms)} clips per rate, duplication at half the rate, both directions")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
