"""The evaluation's report folder: a results log written clip by clip, and the summary made from it.

``results.jsonl`` gets one line per clip as soon as its answer arrives (flushed and synced), so a run
cut off at any moment loses at most the clip in flight, and ``--resume`` continues from it. The
summary is always recomputed from the whole log (the last line of a clip wins), so clips evaluated
over several sessions or boards merge into one report and none counts twice. Each line names its
session and when in it the clip ended, so the throughput of a run cut off and resumed (even killed)
counts every scored clip once, over the time the sessions took to log their clips.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from convert.compare import agreement, error_metrics
from host.board import link_summary
from train.labels import EMOTIONS
from train.metrics import scores

RESULTS = "results.jsonl"
RUN_INFO = "evaluation.json"
SUMMARY = "summary.json"


class ResultsLog:
    """Append-only JSON lines, one per clip, safe to call from several board threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        """A run killed mid-write leaves half a line: cut it, so the next record starts a line of its own."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock, self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_log(path: Path) -> Iterator[dict]:
    """Every record in the order logged; a line cut off mid-write (the run was killed) is ignored."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "clip" in record:
            yield record


def latest(log: Iterable[dict]) -> dict[str, dict]:
    """The last record of every clip: a clip evaluated again (a failed one, on resume) counts once."""
    return {r["clip"]: r for r in log}


def read_results(path: Path) -> dict[str, dict]:
    """The last record of every clip in the log file."""
    return latest(read_log(path))


def boards_named(records: dict[str, dict], boards: dict) -> dict:
    """The entries of the boards some record names: a board that evaluated nothing is no part of the report."""
    named = {r["board"] for r in records.values()}
    return {url: info for url, info in boards.items() if url in named}


def forget_idle(meta: dict, records: dict[str, dict]) -> None:
    """Drop the boards no record names and a last session that logged no clip: a session that
    evaluated nothing leaves no trace in the evaluation's description."""
    meta["boards"] = boards_named(records, meta["boards"])
    sessions = meta.get("sessions", [])
    if sessions and not any(r.get("session") == len(sessions) - 1 for r in records.values()):
        sessions.pop()


def throughput(log: list[dict], records: dict[str, dict], meta: dict) -> dict | None:
    """Clips per second and bytes per second over all sessions: each scored clip once (its last record),
    each session's time up to the last clip it logged. Lines without a session (older logs) are left out."""
    sessions = meta.get("sessions", [])
    seconds: dict[int, float] = {}
    for r in log:
        if "session" in r:
            seconds[r["session"]] = max(seconds.get(r["session"], 0.0), r["elapsed_s"])
    ok = [r for c in meta["clips"] if (r := records.get(c)) and r["status"] == "ok" and "session" in r]
    if not ok:
        return None
    total = sum(seconds.values())
    pcm_bytes = 2 * sum(r["pcm_samples"] for r in ok)
    audio_s = sum(r["pcm_samples"] / sessions[r["session"]]["sample_rate"] for r in ok)
    used = [sessions[k] for k in sorted(seconds)]
    return {
        "sessions": len(used),
        "boards": max(s["boards"] for s in used),
        "clips": len(ok),
        "seconds": total,
        "clips_per_s": len(ok) / total,
        "audio_s_per_s": audio_s / total,
        "pcm_bytes_per_s": pcm_bytes / total,
        "wire_bytes_per_s": sum(r["bytes_sent"] + r["bytes_received"] for r in ok) / total,
        "compression": pcm_bytes / max(1, sum(r["bytes_sent"] for r in ok)),
        "line_rate": "; ".join(dict.fromkeys(s["line_rate"] for s in used)),
    }


def _stats(values: np.ndarray) -> dict:
    if not len(values):
        return {}
    return {
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


def summarise(log: list[dict], meta: dict) -> dict:
    """Scores, agreement with the host TFLM reference, latency and throughput of the logged clips."""
    records = latest(log)
    expected = meta["clips"]
    ok = [records[c] for c in expected if c in records and records[c]["status"] == "ok"]
    failed = [records[c] for c in expected if c in records and records[c]["status"] != "ok"]
    in_report = {c: records[c] for c in expected if c in records}
    boards = {
        url: info | {"scored_clips": sum(r["board"] == url for r in ok)}
        for url, info in boards_named(in_report, meta.get("boards", {})).items()
    }
    summary: dict = {
        "run": meta["run"],
        "model_sha256": meta["model_sha256"],
        "split": meta["split"],
        "boards": boards,
        "clips": {
            "planned": len(expected),
            "ok": len(ok),
            "failed": len(failed),
            "missing": len(expected) - len(ok) - len(failed),
        },
        "failed_clips": {r["clip"]: r.get("error", "") for r in failed},
    }
    if not ok:
        return summary
    y = np.array([r["label"] for r in ok])
    board = np.array([r["scores"] for r in ok], dtype=np.int32)
    host = np.array([r["host_scores"] for r in ok], dtype=np.int32)
    out_scale, out_zero = meta["output"]["scale"], meta["output"]["zero_point"]
    summary["board"] = scores(y, np.array([r["predicted"] for r in ok]))
    # the host's own class where it gave one (an embedding classifier's largest logit); else its largest score
    summary["host_tflm"] = scores(y, np.array([r.get("host_predicted", np.argmax(r["host_scores"])) for r in ok]))
    summary["agreement"] = agreement(host, board) | error_metrics((host - out_zero) * out_scale, (board - out_zero) * out_scale)
    clock = {b: info.get("core_clock_hz") for b, info in summary["boards"].items()}
    latency = {}
    for key in ("frontend_cycles", "invoke_cycles"):
        cycles = np.array([r[key] for r in ok], dtype=np.float64)
        ms = np.array([r[key] / clock[r["board"]] * 1e3 for r in ok if clock.get(r["board"])], dtype=np.float64)
        latency[key.replace("_cycles", "")] = {"cycles": _stats(cycles), "ms": _stats(ms)}
    summary["latency"] = latency
    summary["retries"] = {"clips_needing_more_than_one_attempt": sum(r["attempts"] > 1 for r in ok)}
    summary["speakers"] = by_speaker(ok)
    checks = [r for r in records.values() if r.get("status") == "statistics"]
    if checks or any("norm_clips" in r for r in ok):
        summary["speaker_norm"] = speaker_norm_summary(ok, checks)
    if t := throughput(log, records, meta):
        summary["throughput"] = t
    return summary


# How many clips of a voice the statistics had heard before a clip: the board's enrolment curve.
HEARD_BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 49), (50, None))


def by_speaker(ok: list[dict]) -> dict[str, dict]:
    """Scores per speaker (``<speaker>/<emotion>/<n>.wav``): on a voice the model never heard, the figure a user meets."""
    out = {}
    for speaker in sorted({r["clip"].split("/", 1)[0] for r in ok}):
        mine = [r for r in ok if r["clip"].split("/", 1)[0] == speaker]
        s = scores(np.array([r["label"] for r in mine]), np.array([r["predicted"] for r in mine]))
        out[speaker] = {"clips": len(mine), **{k: s[k] for k in ("accuracy", "unweighted_accuracy", "macro_f1")}}
    return out


def speaker_norm_summary(ok: list[dict], checks: list[dict]) -> dict:
    """Per-speaker normalisation: whether each voice's statistics on the board were the host's bit for bit,
    accuracy on new voices by how many of the voice's clips the statistics had heard before each clip, and
    accuracy on known voices (each clip from the voice's training statistics, ``voice`` known)."""
    known = [r for r in ok if r.get("voice") == "known"]
    new = [r for r in ok if r.get("voice") != "known"]
    curve = {}
    for low, high in HEARD_BUCKETS:
        mine = [r for r in new if r.get("norm_clips", -1) >= low and (high is None or r["norm_clips"] <= high)]
        if mine:
            label = f"{low}" if low == high else f"{low}+" if high is None else f"{low}-{high}"
            hits = sum(r["predicted"] == r["label"] for r in mine)
            curve[label] = {"clips": len(mine), "accuracy": hits / len(mine)}
    summary = {
        "statistics_bit_exact": {r["speaker"]: bool(r["bit_exact"]) for r in checks},
        "accuracy_by_clips_heard": curve,
    }
    if known:
        hits = sum(r["predicted"] == r["label"] for r in known)
        summary["known_voices"] = {"clips": len(known), "accuracy": hits / len(known)}
    return summary


def _pct(x: float) -> str:
    return f"{x:.2%}"


def summary_md(s: dict) -> str:
    c = s["clips"]
    lines = [
        "# On-board evaluation",
        "",
        f"- run: `{s['run']}`; model sha256 `{s['model_sha256']}`; clips: {s['split']}",
        f"- clips: {c['ok']} scored, {c['failed']} failed, {c['missing']} not yet evaluated (of {c['planned']})",
    ]
    for url, info in s["boards"].items():
        lines.append(
            f"- board `{url}`: {info.get('board')}, {info.get('core_clock_hz', 0) / 1e6:.0f} MHz, "
            f"arena {info.get('arena_used')} of {info.get('arena_size')} bytes used, build {info.get('build_id')}; "
            f"counter: {info.get('cycle_counter')}; clips scored: {info['scored_clips']}"
        )
        if "link" in info:
            lines.append(f"  - link: {link_summary(info['link'])}")
    if "board" not in s:
        return "\n".join([*lines, "", "No clip scored yet."]) + "\n"
    b, h, a = s["board"], s["host_tflm"], s["agreement"]
    lines += [
        "",
        "## Scores",
        "",
        "| | accuracy | unweighted accuracy | macro-F1 |",
        "| --- | --- | --- | --- |",
        f"| board | {_pct(b['accuracy'])} | {_pct(b['unweighted_accuracy'])} | {_pct(b['macro_f1'])} |",
        f"| host TFLM reference, same clips | {_pct(h['accuracy'])} | {_pct(h['unweighted_accuracy'])} | {_pct(h['macro_f1'])} |",
        "",
        "Per-class recall on the board: "
        + ", ".join(f"{e} {_pct(b['per_class_recall'][e])}" for e in EMOTIONS)
        + ". Confusion matrix: `confusion.png`.",
        "",
        *_speaker_lines(s),
        "## Board vs host TFLM reference",
        "",
        f"- bit-exact int8 scores: {a['bit_exact_clips']}/{a['clips']} clips; max difference {a['max_lsb_diff']} LSB; "
        f"same prediction {a['same_prediction']}/{a['clips']}",
        f"- dequantized scores: RMSE {a['rmse']:.3g}, MAE {a['mae']:.3g}, L2 relative {a['l2_relative']:.3g}, "
        f"cosine {a['cosine']:.6f}",
        "",
        "## Latency per clip",
        "",
        "| stage | mean | p50 | p95 | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for stage, lat in s["latency"].items():
        for unit, scale in (("cycles", 1e6), ("ms", 1.0)):
            st = lat[unit]
            if st:
                suffix = " M" if unit == "cycles" else ""
                cells = " | ".join(f"{st[k] / scale:.2f}{suffix}" for k in ("mean", "p50", "p95", "max"))
                lines.append(f"| {stage} ({unit}) | {cells} |")
    lines += [
        "",
        "Cycles are the board's counter (see its line above): under QEMU, emulator instruction counts, "
        "not silicon cycles; ms are those counts at the board's nominal clock. `latency.png` shows the spread.",
    ]
    t = s.get("throughput")
    if t:
        lines += [
            "",
            "## Throughput",
            "",
            f"- {t['clips']} clips in {t['seconds']:.1f} s on {t['boards']} board(s)"
            + (f", over {t['sessions']} sessions" if t["sessions"] > 1 else "")
            + f": {t['clips_per_s']:.2f} clips/s, "
            f"{t['audio_s_per_s']:.2f} s of audio per second",
            f"- PCM delivered {t['pcm_bytes_per_s'] / 1024:.1f} KiB/s (as int16); bytes on the wire "
            f"{t['wire_bytes_per_s'] / 1024:.1f} KiB/s (both directions, framing included); compression "
            f"{t['compression']:.2f}x",
            f"- line rate: {t['line_rate']}",
        ]
    if s["failed_clips"]:
        lines += ["", "## Failed clips (not counted as predictions)", ""]
        lines += [f"- `{clip}`: {err}" for clip, err in s["failed_clips"].items()]
    return "\n".join(lines) + "\n"


def _speaker_lines(s: dict) -> list[str]:
    lines = [
        "## Per speaker",
        "",
        "A voice the model never heard (leave one speaker out) scores what a user meets; a voice it was trained "
        "on (10-fold, the paper's split) scores higher.",
        "",
        "| speaker | clips | accuracy | unweighted accuracy | macro-F1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for speaker, v in s.get("speakers", {}).items():
        cells = " | ".join(_pct(v[k]) for k in ("accuracy", "unweighted_accuracy", "macro_f1"))
        lines.append(f"| {speaker} | {v['clips']} | {cells} |")
    norm = s.get("speaker_norm")
    if norm:
        exact = norm["statistics_bit_exact"]
        lines += [
            "",
            "Per-speaker normalisation: each clip standardised by the statistics of the voice's clips before it. "
            "Statistics on the board equal to the host's bit for bit: "
            + (", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in exact.items()) or "not checked yet")
            + ". Accuracy by clips of the voice heard before: "
            + (", ".join(f"{k}: {_pct(v['accuracy'])} ({v['clips']})" for k, v in norm["accuracy_by_clips_heard"].items()) or "-")
            + ".",
        ]
        if known := norm.get("known_voices"):
            lines.append(
                f"Voices the model was trained on start every clip from the statistics of their training clips: "
                f"{_pct(known['accuracy'])} on {known['clips']} clips."
            )
    return [*lines, ""]


def plot_latency(records: dict[str, dict], boards: dict, path: Path) -> None:
    """Histograms of front-end and Invoke time per clip (ms at the board clock; counts if unknown)."""
    from train.plots import plt

    ok = [r for r in records.values() if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, title in zip(axes, ("frontend_cycles", "invoke_cycles"), ("front end", "Invoke"), strict=True):
        clock = [boards.get(r["board"], {}).get("core_clock_hz") for r in ok]
        if all(clock):
            values, unit = [r[key] / c * 1e3 for r, c in zip(ok, clock, strict=True)], "ms"
        else:
            values, unit = [r[key] / 1e6 for r in ok], "M cycles"
        ax.hist(values, bins=30, color="tab:blue")
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")  # emulator counts barely vary
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.set_xlabel(f"{title} per clip ({unit})")
        ax.set_ylabel("clips")
        ax.grid(alpha=0.3)
    fig.suptitle("Board latency per clip (its cycle counter at its clock; under QEMU, instruction counts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def current_summary(out_dir: Path, meta: dict) -> dict | None:
    """The summary on disk if it covers the log as it is now (a run killed after its last clip has
    none yet): left as it is, the report of a finished evaluation never changes."""
    path = out_dir / SUMMARY
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("clips") == summarise(list(read_log(out_dir / RESULTS)), meta)["clips"] else None


def write_reports(out_dir: Path, meta: dict) -> dict:
    """summary.json, summary.md, confusion.png and latency.png from the log as it is now."""
    from train.plots import plot_confusion

    log = list(read_log(out_dir / RESULTS))
    records = latest(log)
    s = summarise(log, meta)
    (out_dir / SUMMARY).write_text(json.dumps(s, indent=2) + "\n")
    (out_dir / "summary.md").write_text(summary_md(s))
    if "board" in s:
        plot_confusion(s["board"]["confusion"], out_dir / "confusion.png", f"on board ({s['clips']['ok']} clips)")
        plot_latency(
            {k: v for k, v in records.items() if k in set(meta["clips"])},
            meta.get("boards", {}),
            out_dir / "latency.png",
        )
    return s
