"""The CIFAR-10-LT layout (experiment=cifar10_lt): top-1 accuracy per method and rho beside the published figures,
each with its source, macro-F1 beside it, and how our method ordering compares with the published one."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # the backend: set in aos_bench/report/__init__.py
import mlflow
import numpy as np
import pandas as pd

from aos_bench.paths import PUBLISHED
from aos_bench.registry import display
from aos_bench.report.figures import PAGE_WIDTH, PAPER_MARK, mark_trimmed
from aos_bench.report.markdown import markdown_table
from aos_bench.report.pages import header, write_files
from aos_bench.report.studies import later_sweeps_win, method_order, one_run_each

CELL = ["rho", "method"]  # one cell of the table: the dataset and its imbalance kind are the preset's
GOAL = {"base": 1.5, "ldam_drw": 1.5}  # points of top-1 from the first published figure at rho = 100 (the benchmark's check)


def published(runs: pd.DataFrame) -> pd.DataFrame:
    """The published top-1 figures of conf/published.yaml (method, rho, top1, source, url; a method's first line first)
    that apply to `runs`: CIFAR-10's, none for a sweep on another dataset (experiment=cifar10_lt dataset=synthetic)."""
    figures = pd.DataFrame(PUBLISHED["cifar10_lt"]["figures"], columns=["method", "rho", "top1", "source", "url"])
    return figures if set(runs["dataset"]) == {"cifar10"} else figures.iloc[:0]


def lt_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per rho and method: top-1 and macro-F1 mean and std over seeds, the seeds, and the first published top-1."""
    groups = runs.groupby(CELL)
    cells = groups["accuracy"].agg(top1="mean", top1_std="std", seeds="count").join(groups["f1"].agg(f1="mean", f1_std="std"))
    first = published(runs).drop_duplicates(CELL).set_index(CELL)["top1"].rename("published")
    cells = cells.join(first).reset_index()
    cells["minus_published"] = cells["top1"] - cells["published"]
    return cells


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """'70.12 ± 0.85', or the mean alone for one seed."""
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def figures_text(figures: pd.DataFrame, rho: float, method: str, sources: dict[str, int]) -> str:
    """Every published top-1 of a cell with its source's number: '70.36 [1] / 71.23 [4]'."""
    found = figures.query("rho == @rho and method == @method")
    return " / ".join(f"{row.top1:.2f} [{sources[row.source]}]" for row in found.itertuples())


def lt_table(cells: pd.DataFrame, figures: pd.DataFrame, methods: Sequence[str], rhos: Sequence[float], sources: dict[str, int]) -> str:
    """Markdown: a line per method; per rho our top-1, the published figures, ours − the first, and our macro-F1."""
    by_cell = cells.set_index(CELL)
    lines = []
    for method in methods:
        line = {"method": display(method)}
        for rho in rhos:
            cell = by_cell.loc[(rho, method)] if (rho, method) in by_cell.index else None
            line[f"top-1 rho={rho:g}"] = "" if cell is None else f"{mean_std(cell['top1'], cell['top1_std'])} ({int(cell['seeds'])})"
            line[f"published rho={rho:g}"] = figures_text(figures, rho, method, sources)
            line[f"ours − [first] rho={rho:g}"] = "" if cell is None or pd.isna(cell["minus_published"]) else f"{cell['minus_published']:+.2f}"
            line[f"macro-F1 rho={rho:g}"] = "" if cell is None else mean_std(cell["f1"], cell["f1_std"])
        lines.append(line)
    return markdown_table(pd.DataFrame(lines))


def goal_lines(cells: pd.DataFrame) -> str:
    """Markdown lines: each GOAL method at rho = 100 against its first published figure (mean of >= 3 seeds)."""
    if cells["published"].isna().all():
        return "- not judged: no published figure is set beside this sweep (see Sources)"
    by_cell = cells.set_index(CELL)
    lines = []
    for method, points in GOAL.items():
        if (100, method) not in by_cell.index or pd.isna(by_cell.loc[(100, method), "published"]):
            lines.append(f"- {display(method)} at rho = 100: not run")
            continue
        cell = by_cell.loc[(100, method)]
        held = abs(cell["minus_published"]) <= points and cell["seeds"] >= 3
        verdict = "held" if held else ("NOT held" if cell["seeds"] >= 3 else f"not judged ({int(cell['seeds'])} seed(s), goal needs 3)")
        lines.append(
            f"- {display(method)} at rho = 100: {cell['top1']:.2f} over {int(cell['seeds'])} seed(s) against "
            f"{cell['published']:.2f} published, {cell['minus_published']:+.2f} points (goal: within {points:g}): {verdict}"
        )
    return "\n".join(lines)


def ordering_lines(cells: pd.DataFrame, rhos: Sequence[float]) -> str:
    """Markdown lines: per rho, the methods with a published figure ordered by ours and by the published (best first)."""
    lines = []
    for rho in rhos:
        both = cells[(cells["rho"] == rho) & cells["published"].notna()]
        if len(both) < 2:
            continue
        ours = " > ".join(display(m) for m in both.sort_values("top1", ascending=False)["method"])
        theirs = " > ".join(display(m) for m in both.sort_values("published", ascending=False)["method"])
        agree = ours == theirs
        lines.append(f"- rho = {rho:g}: ours {ours}; published {theirs}{' (the same order)' if agree else ''}")
    return "\n".join(lines) or "- none: fewer than two methods with a published figure in a row"


def lt_figure(cells: pd.DataFrame, runs: pd.DataFrame, methods: Sequence[str], rhos: Sequence[float], title: str) -> plt.Figure:
    """Top-1 per method, a group per rho: bars = our mean, error bars = std, dots = runs, red diamonds = published."""
    fig, axis = plt.subplots(figsize=(PAGE_WIDTH, 4.5))
    width = 0.85 / len(methods)
    by_cell, labelled = cells.set_index(CELL), False
    for i, method in enumerate(methods):
        cell = by_cell.reindex([(rho, method) for rho in rhos])
        x = np.arange(len(rhos)) + (i - (len(methods) - 1) / 2) * width
        axis.bar(x, cell["top1"], width, yerr=cell["top1_std"].fillna(0), capsize=2, label=display(method))
        for position, rho in zip(x, rhos, strict=True):
            seeds = runs[(runs["rho"] == rho) & (runs["method"] == method)]["accuracy"]
            axis.plot([position] * len(seeds), seeds, ".", color="0.25", markersize=3)
        if cell["published"].notna().any():  # the legend names the marker once, and only where one is drawn
            axis.plot(x, cell["published"], **PAPER_MARK, label=None if labelled else "published")
            labelled = True
    lowest = np.nanmin([runs["accuracy"].min(), cells["published"].min()])
    axis.set_ylim(bottom=max(0.0, 10 * np.floor(lowest / 10) - 10))  # 10 points under the lowest: differences of 1 show
    axis.set(xticks=range(len(rhos)), xticklabels=[f"rho = {rho:g}" for rho in rhos], ylabel="test top-1 accuracy (%)")
    axis.set_title(title, fontsize=10, pad=40)  # room for the legend between title and axes
    axis.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=min(len(methods) + 1, 5), frameon=False)
    fig.tight_layout()
    return fig


def write_lt(name: str, parents: Sequence[mlflow.entities.Run], runs: pd.DataFrame, sweeps: str, out: Path) -> list[Path]:
    """CIFAR-10-LT: top-1 per method and rho beside the published figures, macro-F1, the goals and the method ordering."""
    runs, replaced = later_sweeps_win(runs, parents, ["rho", "method", "seed"])
    runs = one_run_each(runs, sweeps, ["rho", "method", "seed"])
    methods, cells = method_order(runs["method"].unique()), lt_cells(runs)
    rhos, trimmed = sorted(runs["rho"].unique(), reverse=True), runs["trimmed"].any()
    figures = published(runs)
    sources = {source: i + 1 for i, source in enumerate(figures["source"].unique())}
    references = "\n".join(f"{i}. {source}: {figures.loc[figures['source'] == source, 'url'].iloc[0]}" for source, i in sources.items())
    if figures.empty:
        references = f"None set beside this sweep: the published figures are CIFAR-10's, and it ran on {', '.join(sorted(set(runs['dataset'])))}."
    text = f"""{header(name, "top-1 accuracy (%) per method, mean ± std over seeds (seeds), beside the published figures", parents, runs, replaced)}
- {PUBLISHED["cifar10_lt"]["variant"] if not figures.empty else "the published figures are CIFAR-10's: none beside this sweep"}
- top-1 = test accuracy (CIFAR-10's test set is balanced, 1,000 images a class); macro-F1 beside it; published
  figures are [numbered](#sources); `ours − [first]` is against the first one listed.

{lt_table(cells, figures, methods, rhos, sources)}

## The benchmark's check

{"- not judged: trimmed runs" if trimmed else goal_lines(cells)}

## Method ordering, ours and published (the first figure of each)

{"- none: trimmed runs are not ranked" if trimmed else ordering_lines(cells, rhos)}

## Sources

{references}
"""
    figure = mark_trimmed(lt_figure(cells, runs, methods, rhos, f"{name}: mean ± std over seeds, dots: runs, red: published"), runs)
    return write_files(out, name, text, cells, figure, runs, ["rho", "method", "seed", "accuracy", "f1", "f1_minority", "steps"])
