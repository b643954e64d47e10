"""Reports of evaluations: Markdown tables with both protocols side by side, JSON, Recall@N plots.

A table is a list of rows; each row maps a column group (a sequence, a model) to the
metrics of each protocol, as `RetrievalResult.to_dict()` gives them. The same shape
serves the main results, the ablations (paper Table 1) and the conditions (Table 2).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

Row = tuple[str, dict[str, dict[str, dict]]]  # (label, {group: {protocol: metrics}})


def _percent(value) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def _groups_and_protocols(rows: list[Row]) -> tuple[list[str], list[str]]:
    groups: list[str] = []
    protocols: list[str] = []
    for _, by_group in rows:
        for group, by_protocol in by_group.items():
            if group not in groups:
                groups.append(group)
            for protocol in by_protocol:
                if protocol not in protocols:
                    protocols.append(protocol)
    return groups, protocols


def markdown_table(rows: list[Row], title: str = "", row_header: str = "model") -> str:
    """Recall@1 / Recall@1% (%) for each group and protocol, queries counted, and a chance row."""
    groups, protocols = _groups_and_protocols(rows)
    header = [row_header]
    for group in groups:
        for protocol in protocols:
            header += [f"{group} {protocol} R@1", f"{group} {protocol} R@1%"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(by_group, keys):
        out = []
        for group in groups:
            for protocol in protocols:
                metrics = by_group.get(group, {}).get(protocol)
                out += [_percent(metrics.get(k)) if metrics else "-" for k in keys]
        return out

    for label, by_group in rows:
        lines.append("| " + " | ".join([label] + cells(by_group, ("recall@1", "recall@1%"))) + " |")
    # Chance depends on the map and the protocol, not on the model: take it from the first row that has it.
    chance: dict[str, dict[str, dict]] = {}
    for _, by_group in rows:
        for group, by_protocol in by_group.items():
            for protocol, metrics in by_protocol.items():
                chance.setdefault(group, {}).setdefault(protocol, metrics)
    lines.append("| chance (random ranking) | " + " | ".join(cells(chance, ("chance@1", "chance@1%"))) + " |")
    counts = []
    for group in groups:
        for protocol in protocols:
            metrics = chance.get(group, {}).get(protocol)
            if metrics:
                counts.append(f"{group} {protocol}: {metrics['num_queries']} queries, {metrics['num_map_entries']} map entries")
    lines += ["", "Counted: " + "; ".join(counts) + "."]
    return "\n".join(lines) + "\n"


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def plot_recall_curves(curves: dict[str, list[float]], path: str | Path, title: str = "") -> None:
    """Recall@N against N, one line per label, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for label, curve in curves.items():
        ns = range(1, len(curve) + 1)
        ax.plot(ns, [100.0 * r for r in curve], marker=".", label=label)
    ax.set_xlabel("N (top-N candidates)")
    ax.set_ylabel("Recall@N (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
