"""A PNG of the train and validation loss curves, from Lightning's CSV log."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def plot_losses(metrics_csvs: list[Path], out_png: Path) -> Path | None:
    """Plot ``train/loss`` and ``val/loss`` against the step from one or more CSV logs (a run
    and its resumptions); returns the PNG path, or None when there is nothing to plot or
    matplotlib (the ``plot`` extra) is not installed (said in the log; the CSV has the losses)."""
    metrics_csvs = [p for p in metrics_csvs if p.is_file()]
    if not metrics_csvs:
        return None
    try:
        import matplotlib
    except ImportError:
        log.info("no %s: matplotlib is not installed (pip install 'omnimodal[plot]'); the losses are in %s",
                 out_png.name, metrics_csvs[-1])
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {"train/loss": ([], []), "val/loss": ([], [])}
    for metrics_csv in metrics_csvs:
        with metrics_csv.open() as f:
            for row in csv.DictReader(f):
                for key, (xs, ys) in series.items():
                    if row.get(key):
                        xs.append(int(row["step"]))
                        ys.append(float(row[key]))
    for xs, ys in series.values():  # resumed runs repeat a few steps: plot in step order
        pairs = sorted(zip(xs, ys))
        xs[:], ys[:] = [p[0] for p in pairs], [p[1] for p in pairs]
    # Fixed margins (room for the log axis' labels) instead of tight_layout, whose extra layout
    # pass measured every label again: ~0.17 s of a short run's wall.
    fig, ax = plt.subplots(figsize=(7, 4))
    fig.subplots_adjust(left=0.14, right=0.98, bottom=0.12, top=0.97)
    for key, (xs, ys) in series.items():
        if xs:
            ax.plot(xs, ys, marker="o" if key.startswith("val") else None, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
