"""The paper layout's figure: F1 per row and method beside the paper's values, and one row's per-class F1 (the
studies draw theirs in aos_bench.report.studies)."""

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt  # the backend: set in aos_bench/report/__init__.py
import mlflow
import numpy as np
import pandas as pd

from aos_bench.registry import display
from aos_bench.report.markdown import row_label, trimmed_steps
from aos_bench.report.runs import METHODS, ROW

PAGE_WIDTH = 10.0  # inches: every report figure is this wide, 1200 pixels at DPI, a page's width read at 100%
DPI = 120  # pixels per inch of the saved PNGs
# The paper's (or a published) value: a red diamond edged in black, apart from the error bars' black caps
PAPER_MARK = {"marker": "D", "color": "red", "markeredgecolor": "black", "markersize": 6, "linestyle": "none", "zorder": 5}


def per_class_row(table: pd.DataFrame, row: str | None) -> tuple:
    """The (dataset, mu, rho) whose per-class F1 is plotted: `row` ('mnist,0.9'), else the measured row of largest mu
    (the first one where no row has a mu, as under imbalance=none)."""
    measured = table[table["mean"].notna()]
    if row:
        dataset, mu = row.split(",")
        measured = measured[(measured["dataset"] == dataset) & np.isclose(measured["mu"], float(mu))]
        if measured.empty:
            raise LookupError(f"--row {row}: the sweep has no runs for dataset {dataset} with mu {mu}")
    chosen = measured.loc[measured["mu"].fillna(-np.inf).idxmax()]
    return tuple(chosen[ROW])


def per_class(runs: pd.DataFrame, row: tuple) -> tuple[pd.DataFrame, list[str], int]:
    """Per-class F1 of each method in one row at its first seed run by every method, and that seed's minority classes.

    One seed, not a mean over seeds: with `imbalance.minority=random` each seed picks other minority classes,
    so a per-class mean would blur exactly what the plot is for.
    """
    cell = runs.merge(pd.DataFrame([dict(zip(ROW, row, strict=True))]), on=ROW)
    methods = [m for m in METHODS if m in set(cell["method"])]
    seed = min(set.intersection(*(set(cell.loc[cell["method"] == m, "seed"]) for m in methods)))
    frames = []
    for method in methods:
        uri = cell[(cell["method"] == method) & (cell["seed"] == seed)]["artifact_uri"].iloc[0]
        frame = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"{uri}/per_class.csv")), dtype={"class": str})
        frames.append(frame.assign(method=method))
    counts = mlflow.artifacts.load_dict(f"{uri}/class_counts.json")
    return pd.concat(frames), [str(counts["classes"][c]) for c in counts["minority_classes"]], seed


def figure(
    table: pd.DataFrame, runs: pd.DataFrame, classes: pd.DataFrame, minority: Sequence[str], titles: tuple[str, str]
) -> plt.Figure:
    """Left: F1 per row and method (bars: mean, error bars: std, dots: each run, red diamonds: the paper). Right: per-class F1."""
    rows = [tuple(row) for row in table.loc[table["mean"].notna(), ROW].drop_duplicates().itertuples(index=False)]  # NaN = NaN
    names = list(dict.fromkeys(classes["class"]))
    widths = [2 + 1.5 * len(rows), max(3, 0.4 * len(names))]  # the two plots' shares of PAGE_WIDTH
    fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 4.8), width_ratios=widths)
    width = 0.8 / len(METHODS)
    by_cell = table.set_index([*ROW, "method"])
    for i, method in enumerate(METHODS):
        cell = by_cell.reindex([(*row, method) for row in rows])
        x = np.arange(len(rows)) + (i - 1) * width
        left.bar(x, cell["mean"], width, yerr=cell["std"].fillna(0), capsize=3, label=display(method))
        for position, row in zip(x, rows, strict=True):
            seeds = runs.merge(pd.DataFrame([dict(zip(ROW, row, strict=True), method=method)]), on=[*ROW, "method"])["f1"]
            left.plot([position] * len(seeds), seeds, ".", color="0.25", markersize=4, label=None)
        if table["paper"].notna().any():
            left.plot(x, cell["paper"], **PAPER_MARK, label="paper" if i == 0 else None)
        per_class_f1 = classes[classes["method"] == method].set_index("class").reindex(names)["f1"]
        right.bar(np.arange(len(names)) + (i - 1) * width, per_class_f1, width, label=display(method))
    left.set(xticks=range(len(rows)), ylabel="test macro-F1 (%)")
    left.set_title(titles[0], fontsize=10, pad=22)  # room for the legend between title and axes
    left.set_xticklabels([row_label(*row) for row in rows], rotation=20, ha="right")
    left.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, frameon=False)  # above the axes
    right.set(xticks=range(len(names)), ylabel="test F1 (%)")
    right.set_title(titles[1], fontsize=10, pad=22)
    right.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    right.set_xticklabels([f"{n}*" if n in minority else n for n in names], rotation=90)
    fig.tight_layout()
    return fig


def mark_trimmed(fig: plt.Figure, runs: pd.DataFrame) -> plt.Figure:
    """`fig` with each of its plots stamped TRIMMED and the trimmed runs' steps, where some of `runs` were trimmed
    (markdown.trimmed_note); else `fig` as it was."""
    if steps := trimmed_steps(runs):
        for axis in (axis for axis in fig.axes if axis.get_label() != "<colorbar>"):
            inches = axis.get_position().width * fig.get_figwidth()  # the plot's width
            axis.text(0.5, 0.5, f"TRIMMED\n{steps} steps/run:\nnot a result", transform=axis.transAxes, ha="center", va="center",
                      rotation=20, fontsize=min(20, max(8, 2.5 * inches)), color="red", alpha=0.45, fontweight="bold", zorder=10)
    return fig
