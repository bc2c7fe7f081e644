"""Command lines of the conversion stage: ``ser-convert``, ``ser-emit`` and ``ser-budget``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

# Light imports only (no TensorFlow): --help, ser-emit and ser-budget need none.
from convert.tflite_file import MODEL_FILE, ModelFileError
from train.tf_env import quiet_tensorflow

quiet_tensorflow()

DEFAULT_GENERATED = Path("firmware") / "generated"


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def _model_path(target: Path) -> Path:
    """A run folder stands for its model_int8.tflite; a .tflite path stands for itself."""
    path = target / MODEL_FILE if target.is_dir() else target
    if not path.exists():
        hint = f"run ser-convert {target} first" if target.is_dir() else "check the path"
        raise FileNotFoundError(f"{path} not found ({hint})")
    return path


def convert_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ser-convert",
        description="Quantize a trained run to full int8 TFLite and verify it on the run's test clips "
        "in TFLM and LiteRT (reference and default kernels); whether QAT is advised is judged on its validation clips.",
    )
    p.add_argument("run", type=Path, help="run folder written by ser-train (holds model.keras, manifest.json, frontend.json)")
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="print the result in one line instead of the whole report (conversion.md holds it either way)",
    )
    qat = p.add_mutually_exclusive_group()
    qat.add_argument(
        "--qat",
        action="store_true",
        help="also fine-tune with fake int8 quantization on the training clips (QAT) and deploy that model; "
        "the PTQ model is kept as model_int8_ptq.tflite and the report compares both",
    )
    qat.add_argument(
        "--qat-if-advised",
        action="store_true",
        help="QAT only when post-training quantization loses more than a point on the validation clips (what ser-main does)",
    )
    p.add_argument("--qat-epochs", type=int, default=10, help="QAT fine-tuning epochs")
    p.add_argument(
        "--classifier-on-int8",
        action="store_true",
        help="for an --embedding-norm run: fit its classifier anew on the int8 model's own embeddings of the training "
        "clips (host TFLM), the values the board reads, instead of the float network's; default: off",
    )
    args = p.parse_args(argv)

    from train.corpus import CorpusError, resolve_root

    missing = [n for n in ("model.keras", "manifest.json", "frontend.json") if not (args.run / n).exists()]
    if missing:
        return _fail("ser-convert", f"{args.run} is not a finished run (missing {', '.join(missing)}); train it with ser-train")
    from train.embedding_norm import EMBEDDING_NORM_FILE

    embedding_head = (args.run / EMBEDDING_NORM_FILE).exists()
    if args.classifier_on_int8 and not embedding_head:
        return _fail(
            "ser-convert",
            f"--classifier-on-int8 refits an --embedding-norm run's classifier, and {args.run} has no {EMBEDDING_NORM_FILE}: "
            "drop the flag, or fit one with python -m train.embedding_norm RUN",
        )
    if embedding_head and args.qat:
        return _fail(
            "ser-convert",
            f"--qat fine-tunes the network, and {args.run / EMBEDDING_NORM_FILE}'s classifier was fitted on the embedding "
            "it has now: convert without --qat",
        )
    try:
        root = resolve_root(args.data)
        from convert.ops import check_ops
        from convert.quantize import convert_run
        from convert.verify import drop_warning, report_md, summary, verify_run

        path = convert_run(args.run, root, classifier_on_int8=args.classifier_on_int8, show_progress=not args.quiet)
        check_ops(path.read_bytes())
        report = verify_run(args.run, root, show_progress=not args.quiet)
        if args.qat or (args.qat_if_advised and report["qat_advised"] and not embedding_head):
            report = _qat(args.run, root, report, args.qat_epochs, show_progress=not args.quiet)
        elif args.qat_if_advised and report["qat_advised"]:
            print(
                f"ser-convert: QAT advised but not run: it would change the embedding {EMBEDDING_NORM_FILE}'s "
                "classifier was fitted on",
                file=sys.stderr,
            )
    except (CorpusError, ModelFileError) as exc:
        return _fail("ser-convert", str(exc))
    (args.run / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.run / "conversion.md").write_text(report_md(report, args.run))
    print(report_md(report, args.run) if args.report else f"{args.run}: {summary(report)}")
    print(f"wrote {path} and {args.run / 'conversion.md'}")
    if report["accuracy_drop_too_large"]:
        print(f"ser-convert: {drop_warning(report, args.run)}", file=sys.stderr)
    return 0


def _qat(run: Path, root: Path, ptq_report: dict, epochs: int, show_progress: bool) -> dict:
    """Keep the PTQ model aside, fine-tune with fake quantization, convert and verify again; the report holds both."""
    from convert.ops import check_ops
    from convert.qat import QAT_MODEL_FILE, QatConfig, fine_tune
    from convert.quantize import PTQ_MODEL_FILE, convert_run
    from convert.verify import verify_run

    shutil.copyfile(run / MODEL_FILE, run / PTQ_MODEL_FILE)
    model, history = fine_tune(run, root, QatConfig(epochs=epochs), show_progress=show_progress)
    model.save(run / QAT_MODEL_FILE)
    path = convert_run(run, root, model, keras_file=QAT_MODEL_FILE, quantization="qat")
    check_ops(path.read_bytes())
    report = verify_run(run, root, show_progress=show_progress)
    # The QAT advice is the one taken on the PTQ model: the QAT model is not judged to need QAT again.
    return report | {"ptq": ptq_report, "qat": history, "qat_advised": ptq_report["qat_advised"]}


def emit_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ser-emit",
        description="Emit the model, op resolver, config header and front-end tables for the firmware.",
    )
    p.add_argument("model", type=Path, help="a run folder (its model_int8.tflite) or any int8 .tflite")
    p.add_argument("--out", type=Path, default=DEFAULT_GENERATED, help="generated folder in the firmware tree")
    p.add_argument(
        "--labels",
        type=Path,
        help="a text file with one label per output, in output order (default: the model's metadata, else class_0..N-1)",
    )
    p.add_argument(
        "--layers",
        action="store_true",
        help="a firmware that keeps every tensor after Invoke, for ser-validate --layers (a larger arena, measured so)",
    )
    args = p.parse_args(argv)
    from convert.emit import emit

    try:
        labels = [ln.strip() for ln in args.labels.read_text().splitlines() if ln.strip()] if args.labels else None
        written = emit(_model_path(args.model).read_bytes(), args.out, labels=labels, layers=args.layers)
    except (FileNotFoundError, ModelFileError, ValueError) as exc:
        return _fail("ser-emit", str(exc))
    for path in written:
        print(f"wrote {path}")
    return 0


def budget_main(argv: list[str] | None = None) -> int:
    from convert.budget import FIXED_FLASH_ALLOWANCE, FIXED_RAM_ALLOWANCE, board, boards, elf_usage, pre_build, table_md

    p = argparse.ArgumentParser(
        prog="ser-budget",
        description="Check that a model (before a build) or a firmware ELF (after one) fits a board's flash and RAM.",
    )
    p.add_argument("model", type=Path, nargs="?", help="a run folder or an int8 .tflite (before a build)")
    p.add_argument("--board", required=True, choices=sorted(boards()), help="board from convert/boards.json")
    p.add_argument("--elf", type=Path, help="a linked firmware ELF (after a build)")
    p.add_argument("--fixed-flash", type=int, default=FIXED_FLASH_ALLOWANCE, help="firmware flash besides the model")
    p.add_argument("--fixed-ram", type=int, default=FIXED_RAM_ALLOWANCE, help="firmware RAM besides the arena")
    p.add_argument("--json", type=Path, help="also write the verdict as JSON")
    args = p.parse_args(argv)
    if args.model is None and args.elf is None:
        return _fail("ser-budget", "give a model (run folder or .tflite) and/or --elf FIRMWARE.elf")
    b = board(args.board)
    sections = []
    try:
        if args.model is not None:
            from convert.emit import board_arena
            from convert.interpreters import tflm_arena_bytes

            tflite = _model_path(args.model).read_bytes()
            arena = board_arena(tflite, tflm_arena_bytes(tflite))
            sections.append(
                (
                    "before build: model + arena + firmware allowance",
                    pre_build(b, len(tflite), arena, args.fixed_flash, args.fixed_ram),
                )
            )
        if args.elf is not None:
            sections.append((f"after build: {args.elf.name}", elf_usage(args.elf, b)))
    except (FileNotFoundError, ModelFileError, ValueError) as exc:
        return _fail("ser-budget", str(exc))
    print(f"## {b.name} ({b.part}): {b.flash // 1024} KiB flash, {b.ram // 1024} KiB RAM\n")
    verdict = []
    for title, lines in sections:
        print(table_md(lines, title))
        verdict += [
            {
                "check": title,
                "memory": line.memory,
                "used": line.used,
                "capacity": line.capacity,
                "fits": line.fits,
                "parts": line.parts,
            }
            for line in lines
        ]
    if args.json:
        args.json.write_text(json.dumps({"board": b.name, "lines": verdict}, indent=2) + "\n")
    over = [v for v in verdict if not v["fits"]]
    if over:
        what = "; ".join(f"{v['memory']} needs {v['used']:,} B of {v['capacity']:,} B ({v['check']})" for v in over)
        return _fail("ser-budget", f"does NOT fit {b.name}: {what}. Choose a smaller model or a larger board.")
    print(f"fits {b.name}")
    return 0
