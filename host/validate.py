"""Validate any int8 model on a board against host TFLM, bit for bit, over raw input tensors.

    ser-validate MODEL.tflite --board qemu                       (builds or reuses the emulated board's firmware)
    ser-validate MODEL.tflite --board sim                        (the simulated board, no build)
    ser-validate MODEL.tflite --port /dev/ttyACM0 --inputs x.npz --labels labels.txt
    ser-validate MODEL.tflite --board qemu --layers             (every layer's output, and the first that differs)

The same input tensors run on the board (firmware/PROTOCOL.md 12: the bytes go straight into the model's
input tensors) and in TFLM's own interpreter on the host; every output is compared: bit-exact count, max
LSB difference, RMSE, MAE, L2 relative error, cosine, and accuracy when the inputs come with labels.
Each input's result is appended to validate.jsonl as it arrives: run the same command again and a
cut-off validation continues where it stopped. Reports: validate.json, validate.md, and the ticks of
each layer of the last Invoke in validate_layers.png.

--layers also reads every operator's output from the board (a firmware that keeps every tensor,
``ser-emit --layers``, PROTOCOL.md 13) and compares it with host TFLM's: bit-exact count and max difference
per layer, and the first layer that differs, which names the kernel to look at.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python host/validate.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from convert.interpreters import TflmRunner, litert_reference_outputs
from convert.tflite_file import LayerOutput, ModelFileError, TensorSpec, graph_io, layer_outputs, sha256
from host.board import DEFAULT_BAUD, BoardError, BoardLink, BoardReset
from host.layers import compare_layers, layers_markdown, plot_latency, summarize_layers

EMULATED_DEFAULT = "qemu-mps2-an386"
RESULTS, RUN_INFO, REPORT_JSON, REPORT_MD = "validate.jsonl", "validate_run.json", "validate.json", "validate.md"
LATENCY_PNG = "validate_layers.png"
HOST_LAYERS_ARENA = 64 * 1024 * 1024  # host TFLM keeping every tensor: room for any model a board could hold
DEFAULT_COUNT = 10


class ValidateError(RuntimeError):
    """A problem the user must fix; the message says what and how."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ser-validate",
        description=__doc__.split("\n\n")[0],
        epilog="Reports in --out: validate.jsonl (a line per input, appended as it runs), validate.json, validate.md, "
        "validate_layers.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="an int8 .tflite file, or a run folder (its model_int8.tflite)")
    where = p.add_argument_group("board (one of)")
    where.add_argument("--board", help=f"'qemu' (= {EMULATED_DEFAULT}), an emulated board name, or 'sim' (simulated board)")
    where.add_argument("--port", help="pyserial URL of a flashed board or a running emulator (/dev/ttyACM0, socket://...)")
    p.add_argument(
        "--inputs",
        default="random",
        help="'random' (uniform over each input's type, --seed), FILE.npy (one input: N x shape or one sample) or "
        "FILE.npz (an array per input, named as the tensor or input_0.., and optionally 'labels'); float arrays are "
        "quantized with the input's scale and zero point",
    )
    p.add_argument("--count", type=int, help=f"how many inputs (default: all of the file, {DEFAULT_COUNT} random ones)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument(
        "--layers",
        action="store_true",
        help="also compare every operator's output with host TFLM and name the first layer that differs (builds a "
        "firmware that keeps every tensor: ser-emit --layers; a flashed board must carry such a firmware)",
    )
    p.add_argument(
        "--kernels",
        choices=("ours", "cmsis-nn", "reference"),
        default="ours",
        help="the emulated board's kernels: ours where they pay, else CMSIS-NN's (default); CMSIS-NN's alone; or TFLM's "
        "reference kernels (for a model CMSIS-NN refuses, and to compare)",
    )
    p.add_argument("--labels", type=Path, help="class names, one a line, for the report (accuracy needs labels in the npz)")
    p.add_argument("--out", type=Path, help="report folder (default: validate-<model name>); the same folder resumes")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"line rate for real serial ports (default {DEFAULT_BAUD})")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for a reply before resending (default 3)")
    p.add_argument("--deps-dir", help="local copies of TFLM/CMSIS sources for building the emulated board ($SER_DEPS_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no build progress")
    args = p.parse_args(argv)
    if bool(args.port) == bool(args.board):
        p.error("give the board: --board qemu|sim (started here) or --port URL (a flashed board or a running emulator)")
    if args.count is not None and args.count < 1:
        p.error("--count must be at least 1")
    return args


# ---- the model and its inputs ----


def load_model(path: Path, board: str | None, kernels: str = "cmsis-nn") -> tuple[Path, bytes]:
    """The model, refused before any build when ser-analyze finds the firmware cannot run it."""
    from convert.analyze import analyze
    from convert.analyze import load_model as find_model

    try:
        file, tflite = find_model(path)
        result = analyze(tflite, file.name, board, kernels=kernels)
    except ModelFileError as exc:
        raise ValidateError(f"{path}: {exc}") from None
    if result.problems:
        raise ValidateError(f"{file}: the firmware cannot run this model:\n" + "\n".join(f"- {p}" for p in result.problems))
    return file, tflite


def _as_input(values: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    """N samples of one input tensor in its own type: (N, *shape), or one sample of exactly its shape."""
    values = np.asarray(values)
    if tuple(values.shape) == spec.shape:
        values = values[None]
    elif tuple(values.shape[1:]) != spec.shape:
        raise ValidateError(
            f"{what}: shape {tuple(values.shape)} does not fit input {spec.index} ({spec.name!r}, shape {spec.shape}): "
            f"give N x {spec.shape} or one sample of {spec.shape}"
        )
    want = spec.numpy_dtype
    if values.dtype == want.newbyteorder("="):
        return values.astype(want)
    if np.issubdtype(values.dtype, np.floating) and spec.scale and np.issubdtype(want, np.integer):
        info = np.iinfo(want)
        q = np.round(values / spec.scale) + spec.zero_point
        return np.clip(q, info.min, info.max).astype(want)
    raise ValidateError(
        f"{what}: dtype {values.dtype} does not fit input {spec.index} ({spec.name!r}, {spec.dtype}): give {spec.dtype} "
        "values, or float values to be quantized with the input's scale and zero point"
    )


def load_inputs(source: str, specs: list[TensorSpec], count: int | None, seed: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """One (N, *shape) array per model input, and the labels (N,) if the file has them."""
    if source == "random":
        n = count or DEFAULT_COUNT
        arrays = []
        for spec in specs:  # sample i depends on (seed, input, i) only: a longer --count keeps the first ones
            dtype = spec.numpy_dtype
            samples = []
            for i in range(n):
                rng = np.random.default_rng([seed, spec.index, i])
                if np.issubdtype(dtype, np.integer):
                    info = np.iinfo(dtype)
                    samples.append(rng.integers(info.min, info.max, size=spec.shape, endpoint=True).astype(dtype))
                else:
                    samples.append(rng.standard_normal(spec.shape).astype(dtype))
            arrays.append(np.stack(samples))
        return arrays, None
    path = Path(source)
    if not path.exists():
        raise ValidateError(f"--inputs {source}: no such file (give FILE.npy, FILE.npz or 'random')")
    labels = None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                arrays = []
                for spec in specs:
                    key = next((k for k in (spec.name, f"input_{spec.index}") if k in names), None)
                    arrays_in_file = [k for k in names if k != "labels"]
                    if key is None and len(specs) == 1 and len(arrays_in_file) == 1:
                        key = arrays_in_file[0]  # one input, one array: whatever its name
                    if key is None:
                        raise ValidateError(
                            f"{path}: no array for input {spec.index} ({spec.name!r}); it holds {names}: name it "
                            f"{spec.name!r} or input_{spec.index}"
                        )
                    arrays.append(_as_input(z[key], spec, f"{path}[{key}]"))
                if "labels" in names:
                    labels = np.asarray(z["labels"]).reshape(-1).astype(np.int64)
        elif path.suffix == ".npy":
            if len(specs) != 1:
                raise ValidateError(f"{path}: the model has {len(specs)} inputs: give an .npz with an array for each")
            arrays = [_as_input(np.load(path, allow_pickle=False), specs[0], str(path))]
        else:
            raise ValidateError(f"--inputs {source}: give FILE.npy, FILE.npz or 'random'")
    except (OSError, ValueError) as exc:
        raise ValidateError(f"{path}: not a readable NumPy file ({exc})") from None
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1:
        raise ValidateError(f"{path}: the inputs hold different numbers of samples ({sorted(sizes)})")
    (n,) = sizes
    if labels is not None and len(labels) != n:
        raise ValidateError(f"{path}: {len(labels)} labels for {n} samples")
    n = min(n, count) if count else n
    return [a[:n] for a in arrays], None if labels is None else labels[:n]


# ---- the board ----


@contextmanager
def open_board(args: argparse.Namespace, tflite: bytes) -> Iterator[tuple[BoardLink, dict]]:
    """A link to a board that runs this model and takes raw tensors, and what to record about it."""
    from host.session import FatalBoardError, ModelMismatch, check_info

    board = None
    firmware_info: dict = {}
    try:
        if args.port:
            url = args.port
        elif args.board == "sim":
            from host.sim_board import SimulatedBoard

            board = SimulatedBoard(tflite, layers=args.layers).start()
            url = board.url
        else:
            from host import firmware, qemu

            name = EMULATED_DEFAULT if args.board == "qemu" else args.board
            if name not in qemu.MACHINES:
                raise ValidateError(
                    f"--board {args.board}: boards are qemu, sim, {', '.join(qemu.MACHINES)}; flash a real board and use --port"
                )
            try:
                elf = firmware.build(
                    name,
                    tflite,
                    args.deps_dir,
                    quiet=args.quiet,
                    cmsis_nn=args.kernels != "reference",
                    own_kernels=args.kernels == "ours",
                    layers=args.layers,
                )
            except firmware.FirmwareUnavailable as exc:
                raise ValidateError(f"cannot build the emulated board: {exc}") from None
            firmware_info = {"board": name, "elf_sha256": sha256(elf.read_bytes())}
            board = qemu.start(name, elf)
            url = board.url
        try:
            link = BoardLink(url, args.baud, timeout=args.timeout)
        except BoardError as exc:
            raise ValidateError(str(exc)) from None
        with link:
            try:
                info = link.hello()
                check_info(info, tflite, url)
            except ModelMismatch:
                have = link.info.model_sha256.hex() if link.info and link.info.model_sha256 else "(none reported)"
                raise ValidateError(
                    f"{url}: the board runs another model.\n  board's model: {have}\n  this model:    {sha256(tflite)}\n"
                    "Flash the firmware built for this model (host/firmware.py build, README: Flashing a board), "
                    "or validate on --board qemu."
                ) from None
            except (FatalBoardError, BoardError) as exc:
                raise ValidateError(str(exc)) from None
            if info.tensor_io is None:
                raise ValidateError(
                    f"{url}: the board's firmware predates raw tensor input (its INFO has no TENSOR_IO, "
                    "firmware/PROTOCOL.md 12): rebuild and flash this project's firmware"
                )
            if args.layers and not info.layers:
                raise ValidateError(
                    f"{url}: the board's firmware does not keep every tensor (its INFO has no LAYERS), so --layers cannot "
                    "read the layers: flash a firmware emitted with `ser-emit MODEL --layers`, or validate on --board qemu"
                )
            link.use_fast_path()
            yield (
                link,
                {
                    "url": url if board is None else args.board,
                    "board": info.board,
                    "cycle_counter": info.cycle_counter,
                    "core_clock_hz": info.core_clock_hz,
                    "build_id": info.build_id,
                    **({"firmware": firmware_info} if firmware_info else {}),
                },
            )
    finally:
        if board is not None:
            board.stop()


# ---- results log ----


def read_results(path: Path) -> dict[int, dict]:
    """The inputs already done; a line cut off mid-way (the run was killed while writing) is ignored."""
    done: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "input" in record:
                done[int(record["input"])] = record
    return done


def append_result(path: Path, record: dict) -> None:
    """One line, on disk before the next input runs; a line a cut left half written is ended first."""
    torn = path.exists() and path.stat().st_size and path.read_bytes()[-1:] != b"\n"
    with path.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def prepare_out(out: Path, meta: dict) -> None:
    """A new report folder, or the same validation's (resume); another validation's is refused."""
    out.mkdir(parents=True, exist_ok=True)
    info = out / RUN_INFO
    if info.exists():
        before = json.loads(info.read_text())
        if bool(before.get("layer_capture")) != meta["layer_capture"]:
            raise ValidateError(
                f"{out} holds a validation {'with' if before.get('layer_capture') else 'without'} --layers: run the same "
                "command as before to resume it, or give another --out"
            )
        for key, what in (("model_sha256", "model"), ("inputs_sha256", "inputs")):
            if before.get(key) != meta[key]:
                raise ValidateError(
                    f"{out} holds the validation of another {what} ({before.get(key, '?')[:12]}... there, "
                    f"{meta[key][:12]}... now): give another --out"
                )
        return
    (out / RESULTS).unlink(missing_ok=True)
    info.write_text(json.dumps(meta, indent=1) + "\n")


# ---- scores ----


def _dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    x = q.astype(np.float64)
    return (x - spec.zero_point) * spec.scale if spec.scale else x


def output_scores(spec: TensorSpec, board: np.ndarray, host: np.ndarray) -> dict:
    """Board against host over every input, for one output tensor (arrays of shape (N, elements))."""
    diff = np.abs(board.astype(np.int64) - host.astype(np.int64)) if np.issubdtype(board.dtype, np.integer) else None
    b, h = _dequantize(board, spec), _dequantize(host, spec)
    err = b - h
    norm_h = np.linalg.norm(h)
    norm_b = np.linalg.norm(b)
    if np.array_equal(b, h):
        cosine = 1.0  # exactly, not 1 + rounding
    else:
        cosine = float(np.clip(np.sum(b * h) / (norm_b * norm_h), -1.0, 1.0)) if norm_b and norm_h else 0.0
    return {
        "index": spec.index,
        "name": spec.name,
        "dtype": spec.dtype,
        "shape": list(spec.shape),
        "inputs": len(board),
        "bit_exact": int(np.sum(np.all(board == host, axis=1))),
        "max_lsb": int(diff.max()) if diff is not None and diff.size else None,
        "rmse": float(np.sqrt(np.mean(err**2))) if err.size else 0.0,
        "mae": float(np.mean(np.abs(err))) if err.size else 0.0,
        "l2r": float(np.linalg.norm(err) / norm_h) if norm_h else (0.0 if not np.any(err) else None),
        "cos": cosine,
    }


def summarize(records: list[dict], outputs: list[TensorSpec], labels: np.ndarray | None, names: list[str] | None) -> dict:
    records = sorted(records, key=lambda r: r["input"])
    per_output = []
    for spec in outputs:
        dtype = spec.numpy_dtype
        board = np.array([r["board"][spec.index] for r in records], dtype=dtype).reshape(len(records), -1)
        host = np.array([r["host"][spec.index] for r in records], dtype=dtype).reshape(len(records), -1)
        scores = output_scores(spec, board, host)
        checked = [r["litert_reference"][spec.index] for r in records if "litert_reference" in r]
        scores["litert_reference_agrees"] = f"{sum(checked)}/{len(checked)}" if checked else None
        per_output.append(scores)
    cycles = np.array([r["cycles"] for r in records], dtype=np.float64)
    summary: dict = {
        "inputs": len(records),
        "all_bit_exact": all(o["bit_exact"] == o["inputs"] for o in per_output),
        "outputs": per_output,
        "cycles": {
            "mean": float(cycles.mean()) if cycles.size else None,
            "median": float(np.median(cycles)) if cycles.size else None,
            "min": int(cycles.min()) if cycles.size else None,
            "max": int(cycles.max()) if cycles.size else None,
        },
    }
    if labels is not None and records:
        truth = np.array([labels[r["input"]] for r in records])
        board0 = np.array([np.argmax(r["board"][0]) for r in records])
        host0 = np.array([np.argmax(r["host"][0]) for r in records])
        summary["accuracy"] = {
            "board": float(np.mean(board0 == truth)),
            "host": float(np.mean(host0 == truth)),
            "agreement": float(np.mean(board0 == host0)),
        }
    if names:
        summary["labels"] = names
    refused = sorted({r["litert_refused"] for r in records if r.get("litert_refused")})
    if refused:
        summary["litert_refused"] = "; ".join(refused)
    return summary


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def to_markdown(meta: dict, summary: dict) -> str:
    lines = [
        f"# ser-validate: {meta['model']}",
        "",
        f"Board: {meta['board'].get('board')} ({meta['board'].get('url')}), build {meta['board'].get('build_id')}. "
        f"Reference: host TFLM (tflite-micro {meta['reference']}). Inputs: {meta['inputs']}, {summary['inputs']} run.",
        "",
        "| output | shape | dtype | bit-exact | max LSB diff | RMSE | MAE | L2r | COS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in summary["outputs"]:
        lines.append(
            f"| {o['index']} `{o['name']}` | {'x'.join(map(str, o['shape']))} | {o['dtype']} | {o['bit_exact']}/{o['inputs']} "
            f"| {o['max_lsb']} | {o['rmse']:.3g} | {o['mae']:.3g} | {_g(o['l2r'])} | {o['cos']:.6f} |"
        )
    c = summary["cycles"]
    lines += [
        "",
        f"Invoke per inference ({meta['board'].get('cycle_counter')}): mean {c['mean']:.0f}, median {c['median']:.0f}, "
        f"min {c['min']}, max {c['max']}."
        if c["mean"] is not None
        else "No inference ran.",
    ]
    if "accuracy" in summary:
        a = summary["accuracy"]
        lines += [
            "",
            f"Accuracy (output 0, argmax against the labels): board {a['board']:.1%}, host {a['host']:.1%}, "
            f"board and host agree on {a['agreement']:.1%}.",
        ]
    layers = meta.get("layers") or []
    if "per_layer" in summary:
        lines += layers_markdown(summary["per_layer"], meta["board"].get("cycle_counter"))
    elif any(ly["ticks"] for ly in layers):
        lines += ["", "Per layer, the last input's Invoke (PROFILE):", "", "| # | op | ticks | MACs | ticks per MAC |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for i, ly in enumerate(layers):
            per_mac = f"{ly['ticks'] / ly['macs']:.2f}" if ly.get("macs") else ""
            lines.append(f"| {i} | {ly['op']} | {ly['ticks']} | {ly.get('macs') or 0} | {per_mac} |")
    agrees = [
        f"output {o['index']} {o['litert_reference_agrees']}" for o in summary["outputs"] if o.get("litert_reference_agrees")
    ]
    if agrees:
        lines += ["", f"Host TFLM against LiteRT's reference kernels, identical outputs: {', '.join(agrees)}."]
    if summary.get("litert_refused"):
        lines += ["", f"LiteRT's reference kernels gave no second opinion: {summary['litert_refused']}."]
    verdict = "every output bit-exact with host TFLM" if summary["all_bit_exact"] else "outputs DIFFER from host TFLM"
    lines += ["", f"Verdict: {verdict}.", ""]
    return "\n".join(lines)


# ---- the run ----


def validate(args: argparse.Namespace) -> tuple[Path, dict]:
    from importlib import metadata

    from tqdm.auto import tqdm

    emulated = None if args.port or args.board == "sim" else (EMULATED_DEFAULT if args.board == "qemu" else args.board)
    file, tflite = load_model(args.model, emulated, "reference" if args.kernels == "reference" else "cmsis-nn")
    inputs_spec, outputs_spec = graph_io(tflite)
    layers = layer_outputs(tflite) if args.layers else []
    arrays, labels = load_inputs(args.inputs, inputs_spec, args.count, args.seed)
    names = None
    if args.labels:
        if not args.labels.exists():
            raise ValidateError(f"--labels {args.labels}: no such file")
        names = [x.strip() for x in args.labels.read_text().splitlines() if x.strip()]
    n = len(arrays[0])
    digests = [sample_digest([a[i] for a in arrays]) for i in range(n)]
    out = args.out or Path(f"validate-{file.stem}")
    meta = {
        "model": file.name,
        "model_sha256": sha256(tflite),
        "inputs": args.inputs if args.inputs == "random" else Path(args.inputs).name,
        "seed": args.seed if args.inputs == "random" else None,
        "inputs_sha256": digests[0],  # the first input: the same source (a longer --count keeps it)
        "reference": metadata.version("tflite-micro"),
        "layer_capture": bool(args.layers),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    prepare_out(out, meta)
    done = {i: r for i, r in read_results(out / RESULTS).items() if i < n}
    for i, record in done.items():
        if record.get("input_sha256") != digests[i]:
            raise ValidateError(f"{out}: input {i} is not the one validated there: give another --out")
    todo = [i for i in range(n) if i not in done]
    if todo:
        host = TflmRunner(tflite, HOST_LAYERS_ARENA if args.layers else None, preserve_all=args.layers)
        # LiteRT's reference kernels, a second opinion on host TFLM, in a child process (it may crash)
        second, refused = litert_reference_outputs(tflite, [[a[i] for a in arrays] for i in todo])
        second_opinion = dict(zip(todo, second, strict=True))
        with open_board(args, tflite) as (link, board_meta):
            record_board(out, board_meta)
            bar = tqdm(total=n, initial=n - len(todo), unit="input", disable=True if args.quiet else None, desc="validate")
            try:
                for i in todo:
                    tensors = [a[i] for a in arrays]
                    done[i] = run_one(link, host, inputs_spec, outputs_spec, tensors, i, digests[i], len(done), layers)
                    ref = second_opinion[i]
                    if ref is not None:  # host TFLM against LiteRT's reference kernels, per output
                        done[i]["litert_reference"] = [bool(np.array_equal(np.reshape(r, -1), h)) for r, h in
                                                       zip(ref, done[i]["host"], strict=True)]  # fmt: skip
                    elif refused:
                        done[i]["litert_refused"] = refused
                    append_result(out / RESULTS, done[i])
                    bar.update(1)
            finally:
                bar.close()
            record_layers(out, link, tflite)
    meta = {**json.loads((out / RUN_INFO).read_text()), "model": file.name, "inputs": meta["inputs"]}
    meta.setdefault("board", {})
    records = [done[i] for i in range(n) if i in done]
    summary = summarize(records, outputs_spec, labels, names)
    profile = meta.get("layers") or []
    if args.layers:
        summary["per_layer"] = summarize_layers(records, layers, profile)
    report = {**meta, "summary": summary}
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
    (out / REPORT_MD).write_text(to_markdown(meta, summary))
    if any(p["ticks"] for p in profile):
        rows = summary["per_layer"]["layers"] if args.layers else None
        differing = None if rows is None else {r["op_index"] for r in rows if r["bit_exact"] < r["inputs"]}
        plot_latency(profile, out / LATENCY_PNG, f"{file.name} on {meta['board'].get('board')}: ticks per layer", differing)
    return out, report


def sample_digest(tensors: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.shape}{t.dtype}".encode() + np.ascontiguousarray(t).tobytes())
    return h.hexdigest()[:16]


def record_board(out: Path, board_meta: dict) -> None:
    """The board of this session in the run info; other firmware than the one the validation started with is refused."""
    info = json.loads((out / RUN_INFO).read_text())
    before, now = info.get("firmware"), board_meta.get("firmware")
    if before and now and before != now:
        raise ValidateError(
            f"{out}: the {now['board']} firmware changed since this validation started (ELF sha256 "
            f"{before['elf_sha256'][:12]} then, {now['elf_sha256'][:12]} now): give another --out rather than mix two firmwares"
        )
    info["board"] = {k: v for k, v in board_meta.items() if k != "firmware"}
    if now:
        info["firmware"] = now
    (out / RUN_INFO).write_text(json.dumps(info, indent=1) + "\n")


def record_layers(out: Path, link: BoardLink, tflite: bytes) -> None:
    """The per-layer ticks of the last Invoke (PROFILE, firmware/PROTOCOL.md 3) with each layer's MACs, in the run info."""
    from convert.tflite_file import layer_macs

    try:
        entries = link.profile().entries
    except BoardError:
        return  # the per-layer table is a bonus: the validation itself is complete
    macs = layer_macs(tflite)
    layers = [{"op": name, "ticks": ticks, "macs": macs[i] if i < len(macs) else None} for i, (name, ticks) in enumerate(entries)]
    info = json.loads((out / RUN_INFO).read_text())
    info["layers"] = layers
    (out / RUN_INFO).write_text(json.dumps(info, indent=1) + "\n")


def run_one(link, host, inputs_spec, outputs_spec, tensors, i: int, digest: str, kept: int, layers: list[LayerOutput]) -> dict:
    """One input on the board and on the host: the record of validate.jsonl (with ``layers``: each layer's
    [bit-exact, max difference])."""
    payloads = [spec.to_bytes(t) for spec, t in zip(inputs_spec, tensors, strict=True)]
    try:
        try:
            outs, cycles = link.run_tensors(payloads, i)
        except BoardReset:  # the board restarted mid-way: shake hands again, run this input again
            link.hello()
            outs, cycles = link.run_tensors(payloads, i)
    except BoardError as exc:
        raise ValidateError(f"input {i}: {exc} (the {kept} results so far are kept: run the same command to resume)") from None
    board_out = [spec.from_bytes(b) for spec, b in zip(outputs_spec, outs, strict=True)]
    try:
        host_out = host.run(tensors)
    except (RuntimeError, ValueError) as exc:
        raise ValidateError(f"input {i}: host TFLM cannot run it ({exc}); give inputs the model accepts (--inputs)") from None
    per_layer = {}
    if layers:
        try:
            per_layer = {"layers": compare_layers(link, i, host, layers)}
        except BoardError as exc:
            raise ValidateError(f"input {i}, reading the layers: {exc} (the {kept} results so far are kept: run the same "
                                "command to resume)") from None  # fmt: skip
    return {
        "input": i,
        "input_sha256": digest,
        "cycles": cycles,
        "bit_exact": all(np.array_equal(b, h) for b, h in zip(board_out, host_out, strict=True)),
        "board": [b.reshape(-1).tolist() for b in board_out],
        "host": [h.reshape(-1).tolist() for h in host_out],
        **per_layer,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out, report = validate(args)
    except ValidateError as exc:
        print(f"ser-validate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ser-validate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    s = report["summary"]
    for o in s["outputs"]:
        print(
            f"output {o['index']} ({o['name']}): {o['bit_exact']}/{o['inputs']} bit-exact, max LSB diff {o['max_lsb']}, "
            f"RMSE {o['rmse']:.3g}, COS {o['cos']:.6f}"
        )
    if s["cycles"]["mean"] is not None:
        print(f"Invoke: median {s['cycles']['median']:.0f} ({report['board'].get('cycle_counter')})")
    if "accuracy" in s:
        print(f"accuracy: board {s['accuracy']['board']:.1%}, host {s['accuracy']['host']:.1%}")
    layers_exact = True
    if "per_layer" in s:
        first = s["per_layer"]["first_differing"]
        layers_exact = first is None
        rows = s["per_layer"]["layers"]
        exact = sum(1 for r in rows if r["bit_exact"] == r["inputs"])
        print(
            f"layers: {exact}/{len(rows)} bit-exact on every input"
            + ("" if first is None else f"; first differing layer #{first['op_index']} {first['op']} (tensor {first['tensor']})")
        )
    print(f"reports: {out / REPORT_MD}, {out / REPORT_JSON}")
    return 0 if s["all_bit_exact"] and layers_exact else 1


if __name__ == "__main__":
    sys.exit(main())
