"""Reports of evaluations: Markdown tables with both protocols side by side, JSON, Recall@N plots.

A table is a list of rows; each row maps a column group (a sequence, a model) to the
metrics of each protocol, as `RetrievalResult.to_dict()` gives them. The same shape
serves the main results, the ablations (paper Table 1) and the conditions (Table 2).
"""
from __future__ import annotations

import json
from pathlib import Path

from cmirl_ros.atomic import atomic_write, atomic_write_text

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
    """Recall@1 / Recall@1% (%) per group and protocol, then the chance level of each protocol.

    Chance (the expected recall of a random ranking) depends on the map and the queries, not on
    the model, so each row carries it once per protocol (from its first group).
    """
    groups, protocols = _groups_and_protocols(rows)
    header = [row_header]
    for group in groups:
        for protocol in protocols:
            header += [f"{group} {protocol} R@1", f"{group} {protocol} R@1%"]
    header += [f"chance {protocol} R@1 / R@1%" for protocol in protocols]
    header += ["queries (" + " / ".join(protocols) + ")"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, by_group in rows:
        cells = [label]
        for group in groups:
            for protocol in protocols:
                metrics = by_group.get(group, {}).get(protocol)
                cells += [_percent(metrics.get(k)) if metrics else "-" for k in ("recall@1", "recall@1%")]
        first = by_group[next(iter(by_group))]
        for protocol in protocols:
            m = first.get(protocol)
            cells.append(f"{_percent(m.get('chance@1'))} / {_percent(m.get('chance@1%'))}" if m else "-")
        cells.append(" / ".join(str(first[p]["num_queries"]) if p in first else "-" for p in protocols))
        lines.append("| " + " | ".join(cells) + " |")
    maps = sorted({m["num_map_entries"] for _, g in rows for by_p in g.values() for m in by_p.values()})
    lines += ["", f"Map entries: {', '.join(map(str, maps))}. R@1% = a correct entry in the top max(1, round(M/100))."]
    return "\n".join(lines) + "\n"


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
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def pr_plot_path(json_path: str | Path) -> Path:
    """Where the precision-recall PNG of a JSON report goes: beside it, `NAME_pr.png`."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + "_pr.png")


def plot_pr_curves(curves: dict, path: str | Path, title: str = "") -> None:
    """Loop-closure precision against recall (`PRCurve`s, one line per label), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for label, curve in curves.items():
        if curve is not None and len(curve.recall) and curve.num_positives:
            ax.step(100.0 * curve.recall, 100.0 * curve.precision, where="post", marker=".", label=label)
    ax.set_xlabel("recall (% of queries with a true revisit)")
    ax.set_ylabel("precision (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
