"""Benchmark: the firmware on a board, per model -- memory by component, arena, and instructions.

    SER_DEPS_DIR=... python benchmarks/firmware_benchmark.py runs/NAME [runs/OTHER | model.tflite ...]
        [--board qemu-mps2-an386] [--clips 5] [--no-reference] [--data CASIA] [--out reports/firmware]

For each model: builds the firmware (CMSIS-NN kernels, and TFLM's reference kernels for the
speed-up), reads flash and RAM by component from the linker map (TFLM, CMSIS-NN, model, app,
libc), runs clips on the emulated board and prints front-end and Invoke instruction counts (QEMU
-icount: emulator counts, not silicon cycles), instructions per MAC and the aims of the issue.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convert.tflite_file import count_macs, read_metadata  # noqa: E402
from host import qemu  # noqa: E402
from host.board import BoardLink  # noqa: E402
from host.firmware import build  # noqa: E402
from train.frontend import FrontEndConfig, fit_clip  # noqa: E402

MAP_LINE = re.compile(r"^\s*(\.\S+)?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)$")


def component(origin: str) -> str:
    if "libtflm.a" in origin:
        # CMSIS-NN's own functions are arm_*.c members; TFLM's kernels (and their CMSIS-NN glue) are .cc
        return "CMSIS-NN" if re.search(r"\(arm_\w+\.c\.obj\)", origin) else "TFLM"
    if "model_data" in origin:
        return "model"
    if any(lib in origin for lib in ("libc", "libm", "libgcc", "libstdc++", "libnosys", "crt")):
        return "libc/libgcc"
    return "app, front end, port"


def map_sections(map_file: Path, ram_origin: int) -> dict[str, dict[str, int]]:
    """Bytes per component in flash and in RAM, from the input-section lines of a GNU ld map."""
    usage: dict[str, dict[str, int]] = {"flash": defaultdict(int), "ram": defaultdict(int)}
    pending = None
    in_memory_map = False
    for line in map_file.read_text(errors="replace").splitlines():
        if line.startswith("Linker script and memory map"):
            in_memory_map = True
            continue
        if not in_memory_map:
            continue
        stripped = line.strip()
        if stripped.startswith(".") and len(stripped.split()) == 1:
            pending = stripped  # section name on its own line; address/size/origin follow
            continue
        m = MAP_LINE.match(line)
        if not m:
            pending = None
            continue
        name = m.group(1) or pending or ""
        pending = None
        addr, size, origin = int(m.group(2), 16), int(m.group(3), 16), m.group(4)
        if size == 0 or not name.startswith((".text", ".rodata", ".data", ".bss", ".ARM", ".init", ".fini")):
            continue
        comp = component(origin)
        if name.startswith(".bss"):
            usage["ram"][comp] += size
        elif name.startswith(".data"):
            usage["ram"][comp] += size
            usage["flash"][comp] += size
        elif addr < ram_origin:
            usage["flash"][comp] += size
    return {k: dict(v) for k, v in usage.items()}


def clips_for(cfg: FrontEndConfig | None, count: int, data: str | None, elements: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if cfg is None:
        return [rng.integers(-128, 128, elements).astype(np.int16) for _ in range(count)]
    if data:
        from train.corpus import discover, read_wav

        clips = discover(Path(data))[:: max(1, 1200 // count)][:count]
        return [fit_clip(read_wav(Path(data) / c.path), cfg) for c in clips]
    return [fit_clip((rng.standard_normal(cfg.clip_samples) * 3000).astype(np.int16), cfg) for _ in range(count)]


def measure(board: str, tflite: bytes, clips: list[np.ndarray], reference: bool) -> dict:
    elf = build(board, tflite, cmsis_nn=not reference)
    with qemu.running(board, elf) as emu, BoardLink(emu.url) as link:
        info = link.hello()
        results = [link.classify(pcm, i) for i, pcm in enumerate(clips)]
        profile = link.profile()
    return {
        "elf": str(elf),
        "info": info,
        "frontend": [r.frontend_cycles for r in results],
        "invoke": [r.invoke_cycles for r in results],
        "profile": profile.entries,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="run folders (their model_int8.tflite) or .tflite files")
    p.add_argument("--board", default="qemu-mps2-an386")
    p.add_argument("--clips", type=int, default=5)
    p.add_argument("--data", help="CASIA root for real clips (default: synthetic noise)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference-kernel build")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "firmware")
    args = p.parse_args()

    from convert.budget import board as board_spec
    from convert.budget import elf_usage

    spec = board_spec(args.board)
    report = []
    for target in args.models:
        path = target / "model_int8.tflite" if target.is_dir() else target
        tflite = path.read_bytes()
        meta = read_metadata(tflite)
        cfg = FrontEndConfig(**meta["frontend"]) if meta else None
        from convert.tflite_file import io_specs

        elements = int(np.prod(io_specs(tflite)[0].shape))
        clips = clips_for(cfg, args.clips, args.data, elements)
        macs = count_macs(tflite)
        fast = measure(args.board, tflite, clips, reference=False)
        memory = map_sections(Path(fast["elf"]).with_suffix(".map"), spec.ram_origin)
        flash_line, ram_line = elf_usage(Path(fast["elf"]), spec)  # totals from the ELF itself
        memory["ram"]["stack and other"] = ram_line.used - sum(memory["ram"].values())
        row = {
            "model": str(target),
            "board": args.board,
            "counter": fast["info"].cycle_counter,
            "macs": macs,
            "model_bytes": len(tflite),
            "arena_size": fast["info"].arena_size,
            "arena_used": fast["info"].arena_used,
            "flash_bytes": flash_line.used,
            "ram_bytes": ram_line.used,
            "memory_by_component": memory,
            "frontend_instructions": float(np.mean(fast["frontend"])),
            "invoke_instructions": float(np.mean(fast["invoke"])),
            "profile": fast["profile"],
        }
        row["instructions_per_mac"] = row["invoke_instructions"] / macs
        row["frontend_share_of_invoke"] = row["frontend_instructions"] / row["invoke_instructions"]
        if not args.no_reference:
            ref = measure(args.board, tflite, clips, reference=True)
            row["reference_invoke_instructions"] = float(np.mean(ref["invoke"]))
            row["cmsis_nn_speedup"] = row["reference_invoke_instructions"] / row["invoke_instructions"]
        report.append(row)
        print_row(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "firmware_benchmark.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out / 'firmware_benchmark.json'}")
    return 0


def print_row(r: dict) -> None:
    def aim(ok: bool) -> str:
        return "meets aim" if ok else "MISSES aim"

    print(f"\n## {r['model']} on {r['board']} ({r['counter']})")
    print(f"MACs {r['macs'] / 1e6:.2f} M, model {r['model_bytes']:,} B, arena {r['arena_used']:,} of {r['arena_size']:,} B")
    print("| memory | component | bytes |\n| --- | --- | --- |")
    for mem in ("flash", "ram"):
        for comp, size in sorted(r["memory_by_component"][mem].items(), key=lambda kv: -kv[1]):
            print(f"| {mem} | {comp} | {size:,} |")
    print(
        f"flash {r['flash_bytes']:,} B vs model + 64 KiB = {r['model_bytes'] + 65536:,}: "
        f"{aim(r['flash_bytes'] <= r['model_bytes'] + 65536)}"
    )
    ram_aim = r["arena_size"] + 16384
    print(f"RAM {r['ram_bytes']:,} B vs arena + 16 KiB = {ram_aim:,}: {aim(r['ram_bytes'] <= ram_aim)}")
    print(
        f"Invoke {r['invoke_instructions']:,.0f} instructions = {r['instructions_per_mac']:.2f} per MAC "
        f"({aim(r['instructions_per_mac'] <= 1.5)} <= 1.5)"
    )
    print(
        f"front end {r['frontend_instructions']:,.0f} = {r['frontend_share_of_invoke']:.1%} of Invoke "
        f"({aim(r['frontend_share_of_invoke'] <= 0.25)} <= 25 %)"
    )
    if "cmsis_nn_speedup" in r:
        print(
            f"reference kernels {r['reference_invoke_instructions']:,.0f}: CMSIS-NN is {r['cmsis_nn_speedup']:.1f}x faster "
            f"({aim(r['cmsis_nn_speedup'] >= 4)} >= 4x)"
        )


if __name__ == "__main__":
    sys.exit(main())
