"""Benchmark: TFLM's own models on the emulated board, bit for bit against host TFLM, with three kernel sets.

    SER_DEPS_DIR=... python benchmarks/tflm_models_benchmark.py [--inputs 3] [--only NAME ...]
        [--kernels ours cmsis-nn reference] [--board qemu-mps2-an386] [--out reports/tflm_models]

Every ``.tflite`` the pinned TFLM carries (its examples, models and integration tests) is analyzed as
``ser-analyze`` does. Each one the board can run is built with our kernels, with TFLM's CMSIS-NN kernels
alone and with TFLM's reference kernels; N random input tensors go through the raw tensor path
(firmware/PROTOCOL.md 12) and every output is compared with host TFLM. Prints one row per model: ops,
MACs, flash, RAM, Invoke instructions (QEMU ``-icount``: emulator counts, not silicon cycles) and
instructions per MAC for each kernel set, the speed-up of ours over CMSIS-NN, and how many inputs were
bit-exact; models the board cannot run are listed with the reason. ``--only`` takes name fragments
(``--only seanet/conv hello``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convert.analyze import analyze  # noqa: E402
from convert.budget import board as board_spec  # noqa: E402
from convert.budget import elf_usage  # noqa: E402
from convert.interpreters import TflmRunner  # noqa: E402
from convert.tflite_file import graph_io  # noqa: E402
from host import qemu  # noqa: E402
from host.board import BoardLink  # noqa: E402
from host.firmware import build  # noqa: E402
from host.validate import load_inputs  # noqa: E402

KERNELS = {  # name -> build() keyword arguments
    "ours": {},
    "cmsis-nn": {"own_kernels": False},
    "reference": {"cmsis_nn": False},
}
MODEL_FOLDERS = ("examples", "models", "integration_tests")


def tflm_models(deps: Path, only: list[str]) -> list[tuple[str, Path]]:
    root = deps / "tflite-micro" / "tensorflow" / "lite" / "micro"
    found = sorted(p for folder in MODEL_FOLDERS for p in (root / folder).rglob("*.tflite"))
    named = [(str(p.relative_to(root).with_suffix("")), p) for p in found]
    return [(n, p) for n, p in named if not only or any(o in n for o in only)]


def run_kernels(board: str, tflite: bytes, kernels: str, inputs: list[list[np.ndarray]], host: TflmRunner) -> dict:
    """Build for one kernel set, run every input through raw tensors, compare with the host."""
    elf = build(board, tflite, os.environ.get("SER_DEPS_DIR"), **KERNELS[kernels])
    in_specs, out_specs = graph_io(tflite)
    cycles, exact = [], 0
    with qemu.running(board, elf) as emu, BoardLink(emu.url) as link:
        link.hello()
        for i, tensors in enumerate(inputs):
            outs, invoke = link.run_tensors([s.to_bytes(t) for s, t in zip(in_specs, tensors, strict=True)], i)
            board_out = [s.from_bytes(b) for s, b in zip(out_specs, outs, strict=True)]
            exact += all(np.array_equal(b, h) for b, h in zip(board_out, host.run(tensors), strict=True))
            cycles.append(invoke)
    flash, ram = elf_usage(elf, board_spec(board))
    return {"elf": str(elf), "invoke": float(np.mean(cycles)), "bit_exact": exact, "flash": flash.used, "ram": ram.used}


def benchmark(name: str, path: Path, board: str, count: int, kernel_sets: list[str]) -> dict:
    tflite = path.read_bytes()
    a = analyze(tflite, name, board)
    row: dict = {"model": name, "ops": sorted({o["op"] for o in a.ops}), "macs": a.macs, "runnable": a.runnable}
    if not a.runnable:
        row["reason"] = "; ".join(a.problems)
        return row
    try:
        in_specs, _ = graph_io(tflite)
        arrays, _ = load_inputs("random", in_specs, count, seed=0)
        host = TflmRunner(tflite, arena_size=max(2 * (a.arena_bytes or 0), 64 * 1024))
    except Exception as exc:  # the host side cannot run it either: say so in the table
        row["runnable"], row["reason"] = False, f"host TFLM: {type(exc).__name__}: {exc}"
        return row
    inputs = [[array[i] for array in arrays] for i in range(count)]
    row["inputs"] = count
    for kernels in kernel_sets:
        try:
            row[kernels] = run_kernels(board, tflite, kernels, inputs, host)
        except Exception as exc:  # one model's failure is a finding of the table, not the end of the run
            row[kernels] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return row


def per_mac(invoke: float | None, macs: int) -> str:
    return f"{invoke / macs:.2f}" if invoke and macs else ""


def markdown(rows: list[dict], kernel_sets: list[str]) -> str:
    head = ["model", "ops", "MACs", "flash", "RAM"]
    for k in kernel_sets:
        head += [f"Invoke, {k}", f"per MAC, {k}"]
    head += ["ours / CMSIS-NN speed-up", "bit-exact"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    skipped = []
    for r in rows:
        if not r["runnable"]:
            skipped.append(f"- {r['model']}: {r['reason']}")
            continue
        first = next((r[k] for k in kernel_sets if "flash" in r.get(k, {})), {})
        cells = [r["model"], ", ".join(r["ops"]), f"{r['macs']:,}", f"{first.get('flash', 0):,}", f"{first.get('ram', 0):,}"]
        exact = []
        for k in kernel_sets:
            res = r[k]
            if "error" in res:
                cells += [res["error"], ""]
                continue
            cells += [f"{res['invoke']:,.0f}", per_mac(res["invoke"], r["macs"])]
            exact.append(f"{k} {res['bit_exact']}/{r['inputs']}")
        ours, cmsis = r.get("ours", {}).get("invoke"), r.get("cmsis-nn", {}).get("invoke")
        cells += [f"{cmsis / ours:.2f}x" if ours and cmsis else "", ", ".join(exact)]
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Not run (what ser-analyze says):", *skipped]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=3, help="random input tensors per model (default 3)")
    p.add_argument("--only", nargs="+", default=[], metavar="NAME", help="only models whose path contains one of these")
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS), help="kernel sets to build")
    p.add_argument("--board", default="qemu-mps2-an386")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "tflm_models")
    args = p.parse_args()
    deps = os.environ.get("SER_DEPS_DIR")
    if not deps:
        print("set SER_DEPS_DIR to the pinned TFLM/CMSIS sources (README: Third-party sources)", file=sys.stderr)
        return 2
    models = tflm_models(Path(deps), args.only)
    if not models:
        print(f"no TFLM model matches {args.only}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (name, path) in enumerate(models, 1):
        print(f"[{n}/{len(models)}] {name}", file=sys.stderr, flush=True)
        rows.append(benchmark(name, path, args.board, args.inputs, args.kernels))
        (args.out / "tflm_models.json").write_text(json.dumps(rows, indent=1) + "\n")  # kept as it goes
    table = markdown(rows, args.kernels)
    (args.out / "tflm_models.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {args.out / 'tflm_models.json'} and tflm_models.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
