"""Per-layer capture for ser-validate --layers: every operator's output on the board against host TFLM.

The board's ``ser-emit --layers`` firmware keeps every tensor after Invoke (PROTOCOL.md 13), and so does
host TFLM with ``preserve_all``: after the same input, each operator's output is read from both and
compared. An error shows first in the layer that makes it, and every later layer inherits it, so the
first differing layer names the kernel to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.interpreters import TflmRunner
from convert.tflite_file import LayerOutput
from host.board import BoardLink


def compare_layers(link: BoardLink, req_id: int, host: TflmRunner, layers: list[LayerOutput]) -> list[list]:
    """[bit-exact, max difference] of each layer output after the last run of ``req_id`` on both sides.

    The difference is in LSB for integer tensors, in the tensor's own unit for float ones."""
    results = []
    for layer in layers:
        spec = layer.tensor
        board = spec.from_bytes(link.read_layer(req_id, spec.index, spec.nbytes))
        reference = host.tensor(spec.index).reshape(spec.shape)
        if np.issubdtype(board.dtype, np.integer):
            diff = int(np.max(np.abs(board.astype(np.int64) - reference.astype(np.int64)), initial=0))
        else:
            diff = float(np.max(np.abs(board.astype(np.float64) - reference.astype(np.float64)), initial=0.0))
        results.append([bool(np.array_equal(board, reference)), diff])
    return results


def summarize_layers(records: list[dict], layers: list[LayerOutput], profile: list[dict]) -> dict:
    """Per layer over every input: bit-exact count and max difference, with the last Invoke's ticks; and
    the first layer (in execution order) that differs on any input."""
    rows = []
    for i, layer in enumerate(layers):
        seen = [r["layers"][i] for r in records if "layers" in r]
        ticks = profile[layer.op_index] if layer.op_index < len(profile) else {}
        rows.append(
            {
                "op_index": layer.op_index,
                "op": layer.op,
                "tensor": layer.tensor.index,
                "name": layer.tensor.name,
                "shape": list(layer.tensor.shape),
                "dtype": layer.tensor.dtype,
                "inputs": len(seen),
                "bit_exact": sum(1 for exact, _ in seen if exact),
                "max_diff": max((d for _, d in seen), default=None),
                "ticks": ticks.get("ticks"),
                "macs": ticks.get("macs"),
            }
        )
    first = next((row for row in rows if row["bit_exact"] < row["inputs"]), None)
    return {
        "layers": rows,
        "first_differing": None if first is None else {k: first[k] for k in ("op_index", "op", "tensor", "name")},
    }


def layers_markdown(summary: dict, cycle_counter: str | None) -> list[str]:
    lines = [
        "",
        f"Per layer: every operator's output on the board against host TFLM, and the last Invoke's ticks ({cycle_counter}):",
        "",
        "| # | op | output | shape | bit-exact | max diff | ticks | MACs | ticks per MAC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["layers"]:
        per_mac = f"{row['ticks'] / row['macs']:.2f}" if row["macs"] and row["ticks"] is not None else ""
        mark = "" if row["bit_exact"] == row["inputs"] else " **differs**"
        ticks = "" if row["ticks"] is None else row["ticks"]
        lines.append(
            f"| {row['op_index']} | {row['op']} | {row['tensor']} `{row['name']}` | {'x'.join(map(str, row['shape']))} "
            f"| {row['bit_exact']}/{row['inputs']}{mark} | {row['max_diff']} | {ticks} | {row['macs'] or 0} | {per_mac} |"
        )
    first = summary["first_differing"]
    lines += [
        "",
        "Every layer bit-exact with host TFLM."
        if first is None
        else f"First differing layer: #{first['op_index']} {first['op']} (output tensor {first['tensor']} `{first['name']}`): "
        "every layer before it is bit-exact, so look at this operator's kernel first.",
    ]
    return lines


def plot_latency(profile: list[dict], path: Path, title: str, differing: set[int] | None = None) -> None:
    """Ticks of each layer of the last Invoke as bars, with ticks per MAC on a second axis; layers whose
    output differs from the host's (``differing``, op indices) in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = [p["ticks"] for p in profile]
    names = [f"{i} {p['op']}" for i, p in enumerate(profile)]
    colors = ["#c0392b" if differing and i in differing else "#2e86c1" for i in range(len(profile))]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(profile) + 2), 4.5))
    ax.bar(range(len(profile)), ticks, color=colors)
    ax.set_xticks(range(len(profile)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("ticks (last Invoke)")
    ax.set_title(title)
    if differing is not None:
        from matplotlib.patches import Patch

        legend = [Patch(color="#2e86c1", label="bit-exact with host TFLM"), Patch(color="#c0392b", label="differs")]
        ax.legend(handles=legend, loc="upper left", fontsize=8)
    per_mac = [(i, p["ticks"] / p["macs"]) for i, p in enumerate(profile) if p.get("macs")]
    if per_mac:
        twin = ax.twinx()
        twin.plot([i for i, _ in per_mac], [v for _, v in per_mac], "o", color="#e67e22")
        twin.set_ylabel("ticks per MAC", color="#e67e22")
        twin.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
