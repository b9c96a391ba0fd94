"""Results people read: a printed table, one JSON per task, a bar chart, a side-by-side comparison."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

BASELINES = ("chance", "blind_frequent", "blind_model")


def _cell(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


def _score(result: dict[str, Any], baseline: str | None = None, key: str = "score") -> float | None:
    block = result["scores"] if baseline is None else result["baselines"].get(baseline, {})
    return block.get(key)


def format_table(results: list[dict[str, Any]]) -> str:
    """Task, metric, n, score and each baseline; extra numbers (circular, P/R/F1) on their own rows."""
    head = f"{'task':<26} {'metric':<16} {'n':>5} {'score':>8} {'chance':>8} {'blind_freq':>10} {'blind_model':>11}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['task'][:26]:<26} {r['metric']:<16} {r['n']:>5} {_cell(_score(r)):>8} " + " ".join(
            f"{_cell(_score(r, b)):>{w}}" for b, w in zip(BASELINES, (8, 10, 11))))
        for key in r["scores"]:
            if key == "score":
                continue
            lines.append(f"{'  ' + key:<26} {'':<16} {'':>5} {_cell(_score(r, None, key)):>8} " + " ".join(
                f"{_cell(_score(r, b, key)):>{w}}" for b, w in zip(BASELINES, (8, 10, 11))))
    return "\n".join(lines)


def safe_name(name: str) -> str:
    """A task name usable as a file name."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "task"


def write_results(results: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One ``<task>.json`` per task under ``out_dir`` (per-item predictions included)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        path = out_dir / f"{safe_name(r['task'])}.json"
        path.write_text(json.dumps(r, indent=2, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths


def plot_results(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> Path | None:
    """A PNG bar chart: per task, each run's score beside the baselines (of the first run).

    Returns None when matplotlib (the ``plot`` extra) is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(runs)
    tasks = [r["task"] for r in runs[names[0]]]
    series: list[tuple[str, list[float]]] = []
    for name in names:
        by_task = {r["task"]: r for r in runs[name]}
        series.append((name, [(_score(by_task[t]) or 0.0) if t in by_task else 0.0 for t in tasks]))
    first = runs[names[0]]
    for b in BASELINES:
        values = [_score(r, b) for r in first]
        if any(v is not None for v in values):
            series.append((b, [v or 0.0 for v in values]))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * len(series) / 3), 4))
    width = 0.8 / len(series)
    hatches = {"chance": "//", "blind_frequent": "..", "blind_model": "xx"}
    for k, (label, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, values, width, label=label, hatch=hatches.get(label), alpha=0.6 if label in hatches else 1.0)
    ax.set_xticks(range(len(tasks)), tasks, rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare(a: dict[str, Any], b: dict[str, Any], limit: int | None = 20) -> tuple[str, list[dict[str, Any]]]:
    """Two runs' results on one task: a summary line and the items where their scores differ."""
    key = lambda e: (e["id"], e["rotation"])  # noqa: E731
    by_b = {key(e): e for e in b["items"]}
    diff = []
    for e in a["items"]:
        other = by_b.get(key(e))
        if other is not None and other["score"] != e["score"]:
            diff.append({"id": e["id"], "rotation": e["rotation"], "question": e["question"], "references": e["references"],
                         "a": {"prediction": e["prediction"], "score": e["score"]}, "b": {"prediction": other["prediction"], "score": other["score"]}})
    a_only = sum(1 for d in diff if d["a"]["score"] > d["b"]["score"])
    text = [f"{a['task']}: A={_cell(_score(a))} ({a['model']})  B={_cell(_score(b))} ({b['model']})  "
            f"{len(diff)} item(s) differ: A better on {a_only}, B better on {len(diff) - a_only}"]
    for d in diff[:limit]:
        text.append(f"  {d['id']} (rotation {d['rotation']}): refs {d['references'][:3]}  A: {d['a']['prediction']!r} [{d['a']['score']:g}]  "
                    f"B: {d['b']['prediction']!r} [{d['b']['score']:g}]")
    if limit is not None and len(diff) > limit:
        text.append(f"  ... {len(diff) - limit} more in the comparison JSON")
    return "\n".join(text), diff
