"""Benchmark: the firmware on a board, per model -- memory by component, arena, and instructions.

    SER_DEPS_DIR=... python benchmarks/firmware_benchmark.py runs/NAME [runs/OTHER | model.tflite ...]
        [--untrained MODEL ...] [--board qemu-mps2-an386] [--clips 5] [--no-reference] [--no-cmsis-nn]
        [--data CASIA] [--out reports/firmware]

--untrained MODEL (a train.models builder, e.g. spectrogram_resnet) benchmarks that architecture with
its default front end, untrained and quantized on a few synthetic clips: instruction counts hardly
depend on the weights, so kernels can be measured without a trained run.

For each model: builds the firmware three ways (our kernels; TFLM's CMSIS-NN kernels without ours;
TFLM's reference kernels), for the speed-ups over both in the same run, reads flash and RAM by
component from the linker map (TFLM, CMSIS-NN, model, app, libc), runs clips on the emulated
board and prints front-end and Invoke instruction counts (QEMU -icount: emulator counts, not
silicon cycles), instructions per MAC, the deepest stack use (the start-up code paints the stack;
the words still painted are read through QEMU's GDB stub after the clips) and, for each aim of the
issue, whether it is met. Per layer it prints instructions per MAC for ours and for TFLM +
CMSIS-NN, and our kernels' loads per MAC: a static count from the inner loops' structure (the
installed QEMU has no TCG plugins to count them), see loads_per_mac().
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convert.tflite_file import MODEL_FILE, count_macs, layer_macs, read_metadata  # noqa: E402
from host import qemu  # noqa: E402
from host.board import BoardLink  # noqa: E402
from host.firmware import build  # noqa: E402
from train.frontend import FrontEndConfig, fit_clip  # noqa: E402

STACK_PAINT = 0x5AC4C0DE  # SER_STACK_PAINT in firmware/boards/common/startup_cortexm.c
AIMS = {  # issue #5, per model and board
    "instructions_per_mac": 1.5,  # Invoke, at most
    "speedup_over_reference": 4.0,  # over TFLM's reference kernels, at least
    "frontend_share_of_invoke": 0.25,  # at most
    "flash_over_model": 64 * 1024,  # flash <= model + this
    "ram_over_arena": 16 * 1024,  # RAM <= arena + this
}
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


def untrained_model(name: str) -> bytes:
    """The int8 model of an untrained `name` with its default front end, carrying the metadata the
    firmware and this benchmark read, quantized on synthetic clips."""
    import keras

    from convert.quantize import quantize_int8
    from convert.tflite_file import with_metadata
    from train.frontend import default_frontend, features
    from train.labels import EMOTIONS
    from train.models import BUILDERS

    keras.utils.set_random_seed(0)
    cfg = default_frontend(name)
    model = BUILDERS[name](cfg.input_shape)
    rep = [features(pcm, cfg) for pcm in clips_for(cfg, 8, None, 0)]
    return with_metadata(quantize_int8(model, rep), {"format": 1, "frontend": cfg.__dict__, "labels": list(EMOTIONS)})


def stack_bounds(elf: Path) -> tuple[int, int]:
    """The stack's lowest address and its top (linker symbols __stack_limit__, __stack_top__)."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        symbols = ELFFile(f).get_section_by_name(".symtab")
        return tuple(symbols.get_symbol_by_name(name)[0]["st_value"] for name in ("__stack_limit__", "__stack_top__"))


def _gdb_command(sock: socket.socket, command: str) -> str:
    """One GDB remote-protocol exchange; returns the reply's body with run-length coding undone.
    Stop notices that arrive meanwhile (QEMU reports the halt on attach) are skipped."""
    data = command.encode()
    sock.sendall(b"$" + data + b"#%02x" % (sum(data) & 0xFF))
    buf = b""
    while True:
        match = re.search(rb"\$([^#]*)#..", buf)
        if match is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("GDB stub closed the connection")
            buf += chunk
            continue
        sock.sendall(b"+")
        buf = buf[match.end() :]
        body = match.group(1).decode()
        if command == "?" or not body.startswith(("T", "S")):
            break
    out: list[str] = []
    i = 0
    while i < len(body):
        if body[i] == "*":  # run-length: repeat the previous character (count - 29) more times
            out.append(out[-1] * (ord(body[i + 1]) - 29))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def stack_used(gdb_port: int, low: int, top: int) -> int:
    """Deepest stack use so far: bytes from the top down to the lowest word no longer painted.
    Attaching halts the emulated CPU, so call it after the clips."""
    with socket.create_connection(("127.0.0.1", gdb_port), timeout=10) as sock:
        _gdb_command(sock, "?")  # halts the CPU and reports why
        memory = b""
        for addr in range(low, top, 1024):
            memory += bytes.fromhex(_gdb_command(sock, f"m{addr:x},{min(1024, top - addr):x}"))
    words = np.frombuffer(memory, dtype="<u4")
    painted = np.flatnonzero(words != STACK_PAINT)
    return top - (low + 4 * int(painted[0])) if painted.size else 0


def measure(board: str, tflite: bytes, clips: list[np.ndarray], reference: bool = False, own_kernels: bool = True) -> dict:
    elf = build(board, tflite, cmsis_nn=not reference, own_kernels=own_kernels)
    low, top = stack_bounds(elf)
    with qemu.running(board, elf, gdb_stub=True) as emu, BoardLink(emu.url) as link:
        info = link.hello()
        results = [link.classify(pcm, i) for i, pcm in enumerate(clips)]
        profile = link.profile()
        link.hello()
        stack = stack_used(emu.gdb_port, low, top)
    return {
        "elf": str(elf),
        "info": info,
        "frontend": [r.frontend_cycles for r in results],
        "invoke": [r.invoke_cycles for r in results],
        "profile": profile.entries,
        "stack_used": stack,
        "stack_size": top - low,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=Path, help="run folders (their model_int8.tflite) or .tflite files")
    p.add_argument("--untrained", action="append", default=[], metavar="MODEL", help="an untrained train.models builder")
    p.add_argument("--board", default="qemu-mps2-an386")
    p.add_argument("--clips", type=int, default=5)
    p.add_argument("--data", help="CASIA root for real clips (default: synthetic noise)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference-kernel build")
    p.add_argument("--no-cmsis-nn", action="store_true", help="skip the build with TFLM's CMSIS-NN kernels alone")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "firmware")
    args = p.parse_args()

    from convert.budget import board as board_spec
    from convert.budget import elf_usage

    spec = board_spec(args.board)
    if not args.models and not args.untrained:
        p.error("give run folders, .tflite files or --untrained MODEL")
    report = []
    targets = [(str(t), None) for t in args.models] + [(f"untrained {n}", n) for n in args.untrained]
    for target, untrained in targets:
        if untrained:
            tflite = untrained_model(untrained)
        else:
            path = Path(target) / MODEL_FILE if Path(target).is_dir() else Path(target)
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
            "model": target,
            "board": args.board,
            "counter": fast["info"].cycle_counter,
            "macs": macs,
            "model_bytes": len(tflite),
            "arena_size": fast["info"].arena_size,
            "arena_used": fast["info"].arena_used,
            "flash_bytes": flash_line.used,
            "ram_bytes": ram_line.used,
            "memory_by_component": memory,
            "stack_used": fast["stack_used"],
            "stack_size": fast["stack_size"],
            "frontend_instructions": float(np.mean(fast["frontend"])),
            "invoke_instructions": float(np.mean(fast["invoke"])),
            "profile": fast["profile"],
        }
        row["instructions_per_mac"] = row["invoke_instructions"] / macs
        row["frontend_share_of_invoke"] = row["frontend_instructions"] / row["invoke_instructions"]
        row["layers"] = layer_table(tflite, fast["profile"])
        if not args.no_cmsis_nn:
            cmsis = measure(args.board, tflite, clips, own_kernels=False)
            row["cmsis_nn_invoke_instructions"] = float(np.mean(cmsis["invoke"]))
            row["cmsis_nn_instructions_per_mac"] = row["cmsis_nn_invoke_instructions"] / macs
            row["speedup_over_cmsis_nn"] = row["cmsis_nn_invoke_instructions"] / row["invoke_instructions"]
            for layer, other in zip(row["layers"], layer_table(tflite, cmsis["profile"]), strict=True):
                layer["cmsis_nn_instructions"] = other["instructions"]
                layer["cmsis_nn_per_mac"] = other["per_mac"]
        if not args.no_reference:
            ref = measure(args.board, tflite, clips, reference=True)
            row["reference_invoke_instructions"] = float(np.mean(ref["invoke"]))
            row["reference_instructions_per_mac"] = row["reference_invoke_instructions"] / macs
            row["speedup_over_reference"] = row["reference_invoke_instructions"] / row["invoke_instructions"]
        row["aims"] = aims(row)
        report.append(row)
        print_row(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "firmware_benchmark.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out / 'firmware_benchmark.json'}")
    return 0


def conv_shapes(tflite: bytes) -> list[dict | None]:
    """Per operator in execution order: a CONV_2D's K (filter height x width x input channels), input
    channels, output channels and output pixels; None for other operators."""
    from convert.tflite_file import _OP_NAMES, _load

    model = _load(tflite)
    graph = model.subgraphs[0]
    shapes: list[dict | None] = []
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        if name != "CONV_2D":
            shapes.append(None)
            continue
        w = [int(d) for d in graph.tensors[int(op.inputs[1])].shape]
        out = [int(d) for d in graph.tensors[int(op.outputs[0])].shape]
        shapes.append({"k": w[1] * w[2] * w[3], "in_c": w[3], "out_c": w[0], "pixels": out[1] * out[2]})
    return shapes


def loads_per_mac(conv: dict) -> float:
    """Words loaded per MAC by our convolution kernel (firmware/kernels/ser_conv_s8.c), counted
    statically from its loops (an LDM of n words counts n; a byte load counts 1):
    - 1-channel path (in_c == 1, K <= 10): per output, one 6-word LDM (bias and 5 filter pairs) and
      one 3-word LDM (multiplier, rounding constant, shift) over K MACs; per pixel, K input bytes.
    - K whole groups of 4 (the assembly channel loop, conv_block; taken when the layer has a bias and
      the whole int8 range, as every such layer of our models): per output channel and 6-pixel block,
      per group one filter word and three 4-word LDMs of columns (24 MACs), one word per pass of the
      8-deep unrolled loop (the columns' end), and 16 words of constants and bookkeeping (bias,
      multiplier, shift, output pointers, loop entry); per pixel, the gather's K / 4 words (K bytes
      when in_c % 4 != 0).
    - otherwise (the C path): per output channel and 4-pixel block, per group one filter word and two
      4-word LDMs (16 MACs), and bias, multiplier and shift; per pixel, the gather as above."""
    k, in_c, out_c = conv["k"], conv["in_c"], conv["out_c"]
    if in_c == 1 and k <= 10:
        return (9 * out_c + k) / (k * out_c)
    groups = -(-k // 4)
    gathered = groups if in_c % 4 == 0 else k
    if k % 4 == 0:
        per_block = out_c * (13 * groups + -(-groups // 8) + 16) + 6 * gathered
        return per_block / (6 * k * out_c)
    per_block = out_c * (9 * groups + 3) + 4 * gathered
    return per_block / (4 * k * out_c)


def layer_table(tflite: bytes, profile: list) -> list[dict]:
    """Per layer of the last Invoke: tag, instructions, MACs and instructions per MAC (MAC layers), and
    for convolutions the static loads per MAC of our kernel."""
    macs = layer_macs(tflite)
    convs = conv_shapes(tflite)
    return [
        {
            "op": tag,
            "instructions": ticks,
            "macs": m,
            "per_mac": ticks / m if m else None,
            "loads_per_mac_static": loads_per_mac(conv) if conv else None,
            "in_c": conv["in_c"] if conv else None,
        }
        for (tag, ticks), m, conv in zip(profile, macs[: len(profile)], convs[: len(profile)], strict=True)
    ]


def aims(r: dict) -> dict[str, dict]:
    """Each aim of the issue: the measured value, the bound and whether it is met."""
    result = {
        "instructions per MAC (Invoke)": (r["instructions_per_mac"], AIMS["instructions_per_mac"], "<="),
        "front end / Invoke": (r["frontend_share_of_invoke"], AIMS["frontend_share_of_invoke"], "<="),
        "flash bytes": (r["flash_bytes"], r["model_bytes"] + AIMS["flash_over_model"], "<="),
        "RAM bytes": (r["ram_bytes"], r["arena_size"] + AIMS["ram_over_arena"], "<="),
    }
    # issue #20, per convolution: at most 0.9 with 8 or more input channels, 2.0 with one
    for i, layer in enumerate(r["layers"]):
        if layer.get("in_c") == 1 or (layer.get("in_c") or 0) >= 8:
            bound = 2.0 if layer["in_c"] == 1 else 0.9
            result[f"layer {i} ({layer['in_c']} input channels) per MAC"] = (layer["per_mac"], bound, "<=")
    result["instructions per MAC (Invoke), issue #20"] = (r["instructions_per_mac"], 1.0, "<=")
    if "speedup_over_cmsis_nn" in r:
        result["speed-up over TFLM's CMSIS-NN kernels"] = (r["speedup_over_cmsis_nn"], 1.0, ">=")
    if "speedup_over_reference" in r:
        result["speed-up over TFLM's reference kernels"] = (r["speedup_over_reference"], AIMS["speedup_over_reference"], ">=")
    return {
        name: {"value": value, "bound": bound, "met": value <= bound if op == "<=" else value >= bound, "op": op}
        for name, (value, bound, op) in result.items()
    }


def print_row(r: dict) -> None:
    print(f"\n## {r['model']} on {r['board']} ({r['counter']})")
    print(f"MACs {r['macs'] / 1e6:.2f} M, model {r['model_bytes']:,} B, arena {r['arena_used']:,} of {r['arena_size']:,} B")
    print(f"stack: deepest use {r['stack_used']:,} of {r['stack_size']:,} B")
    print("| memory | component | bytes |\n| --- | --- | --- |")
    for mem in ("flash", "ram"):
        for comp, size in sorted(r["memory_by_component"][mem].items(), key=lambda kv: -kv[1]):
            print(f"| {mem} | {comp} | {size:,} |")
    print(
        "\n| layer | op | instructions | MACs | per MAC | loads per MAC (static) | CMSIS-NN per MAC | ours over CMSIS-NN |"
        "\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for i, layer in enumerate(r["layers"]):
        per_mac = f"{layer['per_mac']:.2f}" if layer["per_mac"] else ""
        loads = f"{layer['loads_per_mac_static']:.2f}" if layer.get("loads_per_mac_static") else ""
        cmsis = f"{layer['cmsis_nn_per_mac']:.2f}" if layer.get("cmsis_nn_per_mac") else ""
        ratio = f"{layer['cmsis_nn_instructions'] / layer['instructions']:.2f}" if layer.get("cmsis_nn_instructions") else ""
        cells = [str(i), layer["op"], f"{layer['instructions']:,}", f"{layer['macs']:,}", per_mac, loads, cmsis, ratio]
        print("| " + " | ".join(cells) + " |")
    print(f"\nInvoke {r['invoke_instructions']:,.0f}, front end {r['frontend_instructions']:,.0f} instructions per clip")
    print("\n| kernels | Invoke instructions | per MAC | ours faster by |\n| --- | --- | --- | --- |")
    print(f"| ours | {r['invoke_instructions']:,.0f} | {r['instructions_per_mac']:.3f} | |")
    if "cmsis_nn_invoke_instructions" in r:
        print(
            f"| TFLM + CMSIS-NN | {r['cmsis_nn_invoke_instructions']:,.0f} | {r['cmsis_nn_instructions_per_mac']:.3f} "
            f"| {r['speedup_over_cmsis_nn']:.2f}x |"
        )
    if "reference_invoke_instructions" in r:
        print(
            f"| TFLM reference | {r['reference_invoke_instructions']:,.0f} | {r['reference_instructions_per_mac']:.3f} "
            f"| {r['speedup_over_reference']:.2f}x |"
        )
    print("\n| aim | measured | bound | |\n| --- | --- | --- | --- |")
    for name, a in r["aims"].items():
        fmt = "{:,.0f}" if a["bound"] >= 100 else "{:.3f}"
        verdict = "met" if a["met"] else "MISSED"
        print(f"| {name} | {fmt.format(a['value'])} | {a['op']} {fmt.format(a['bound'])} | {verdict} |")


if __name__ == "__main__":
    sys.exit(main())
