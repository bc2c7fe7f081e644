"""Benchmark: on-board evaluation throughput on emulated boards, by the number of boards in parallel.

    python benchmarks/link_benchmark.py runs/NAME [--boards 1 2 3] [--limit 24] [--data CASIA]

Runs ``ser-eval --board qemu`` on the run's first ``--limit`` test clips with 1, 2, 3... QEMU boards
and prints clips/s, audio seconds per wall second, PCM and wire bytes/s, and the time the whole
test split would take. The host's bytes reach the emulated board as Ethernet packets (its UART
moves one byte per QEMU main-loop round, firmware/PROTOCOL.md 8); ``--uart-only`` measures the
UART alone. A busy machine slows it down (stop other work for a clean figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from host import eval_on_device
from host.clips import select


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--boards", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--deps-dir", help="local TFLM/CMSIS sources ($SER_DEPS_DIR)")
    p.add_argument("--uart-only", action="store_true", help="the emulated board's UART alone, not its Ethernet path")
    args = p.parse_args()
    test_clips = len(select(args.run, "test"))
    rows = [
        "| boards | clips/s | audio s per s | PCM KiB/s | wire KiB/s | compression | whole test split |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in args.boards:
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["--run", str(args.run), "--board", "qemu", "--boards", str(n), "--limit", str(args.limit)]
            argv += ["--out", str(Path(tmp) / "eval"), "--quiet"]
            argv += ["--data", args.data] if args.data else []
            argv += ["--deps-dir", args.deps_dir] if args.deps_dir else []
            argv += ["--uart-only"] if args.uart_only else []
            if eval_on_device.main(argv) != 0:
                return 1
            t = json.loads((Path(tmp) / "eval" / "summary.json").read_text())["throughput"]
        row = (
            f"| {n} | {t['clips_per_s']:.2f} | {t['audio_s_per_s']:.2f} | {t['pcm_bytes_per_s'] / 1024:.1f} "
            f"| {t['wire_bytes_per_s'] / 1024:.1f} | {t['compression']:.2f}x | {test_clips / t['clips_per_s'] / 60:.1f} min |"
        )
        rows.append(row)
        print(row, flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
