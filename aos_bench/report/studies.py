"""Reports of the studies beyond the paper's tables: every method side by side, and AOS's eps x p sensitivity.

aos_bench.report.write_report picks write_methods or write_sensitivity by the sweep's preset; each writes <out>/<preset>.md,
.csv, .png and _runs.csv and returns the four paths.
"""

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # the backend: set in aos_bench/report/__init__.py
import mlflow
import numpy as np
import pandas as pd

from aos_bench import registry
from aos_bench.paths import PAPER
from aos_bench.registry import display
from aos_bench.report.figures import PAGE_WIDTH, mark_trimmed
from aos_bench.report.markdown import fmt, markdown_table, settings_text
from aos_bench.report.pages import header, write_files
from aos_bench.report.stats import paired

STUDY_ROW = ["dataset", "imbalance", "mu", "rho"]  # a row of the methods table: the exp row has no mu
REFERENCE = "aos"  # every method is tested against AOS
GRID = ["eps", "p"]  # the sensitivity study's two axes
TUNED = " †"  # a cell whose method trained at its own lr_scale x the recipe's lr, not at the recipe's lr


def one_run_each(runs: pd.DataFrame, sweeps: str, keys: Sequence[str]) -> pd.DataFrame:
    """`runs` if they hold one run per `keys` (write_report has checked the recipe); else ValueError saying what is mixed."""
    repeated = runs.duplicated(list(keys), keep=False)
    if repeated.any():
        example = runs[repeated].iloc[0][list(keys)].to_dict()
        raise ValueError(f"sweep {sweeps} has several runs for one {', '.join(keys)} (e.g. {example}): sweep other settings apart")
    return runs


def later_sweeps_win(runs: pd.DataFrame, parents: Sequence[mlflow.entities.Run], keys: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """Where two joined sweeps ran one job (`keys`: cell and seed), the run of the sweep listed later in --sweep, e.g.
    a rerun of one method's cells at a new setting; and a markdown line saying which runs that left out, or ''."""
    job = [runs[key] for key in keys]
    order = runs["sweep"].map({parent.info.run_id: i for i, parent in enumerate(parents)})
    kept = order == order.groupby(job, dropna=False).transform("max")
    if kept.all():
        return runs, ""
    left = runs[~kept]
    cells = left.groupby([*STUDY_ROW, "method"], dropna=False).size().index
    named = "; ".join(f"{display(cell[-1])} {study_row_label(*cell[:-1])}" for cell in cells)
    several = runs.groupby(job, dropna=False)["sweep"].transform("nunique") > 1
    by = ", ".join(f"`{sweep}`" for sweep in runs.loc[kept & several, "sweep"].unique())
    return runs[kept], f"\n- **{len(left)} runs of an earlier sweep left out: the later sweep {by} ran the same jobs** ({named});"


def method_order(methods: Sequence[str]) -> list[str]:
    """The methods present, in the suite's order (the paper's three first), unknown names last."""
    known = [m for m in registry.METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def study_row_label(dataset: str, imbalance: str, mu: float, rho: float) -> str:
    """'MNIST step mu=0.3 rho=500', 'CIFAR-10 exp rho=100', 'folder none' (its own class sizes)."""
    return f"{display(dataset)} {imbalance}{settings_text(mu, rho)}"


def method_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per row and method: F1 mean, std and seeds, the mean minority-class F1, the rank of each mean in its row (1 = best),
    and the method's lr_scale (1 = the recipe's lr)."""
    groups = runs.groupby([*STUDY_ROW, "method"], dropna=False)
    cells = groups["f1"].agg(mean="mean", std="std", seeds="count").join(groups["f1_minority"].agg(minority_mean="mean"))
    cells = cells.join(groups["lr_scale"].max()).reset_index()  # a method's own lr setting (conf/method/reweight.yaml)
    by_row = cells.groupby(STUDY_ROW, dropna=False)
    cells["rank"] = by_row["mean"].rank(ascending=False, method="min")
    cells["minority_rank"] = by_row["minority_mean"].rank(ascending=False, method="min")
    return cells


def against_reference(runs: pd.DataFrame) -> pd.DataFrame:
    """Per row and method other than AOS: the mean paired difference method − AOS over shared seeds, its p-value, pairs."""
    lines = []
    for key, row in runs.groupby(STUDY_ROW, dropna=False, sort=False):
        by_seed = row.pivot(index="seed", columns="method", values="f1")
        for method in by_seed.columns.drop(REFERENCE, errors="ignore"):
            mean, p, pairs = paired(by_seed, method, REFERENCE)
            lines.append({**dict(zip(STUDY_ROW, key, strict=True)), "method": method, "minus_aos": mean, "p_vs_aos": p, "pairs": pairs})
    return pd.DataFrame(lines, columns=[*STUDY_ROW, "method", "minus_aos", "p_vs_aos", "pairs"])


def rows_in_order(cells: pd.DataFrame) -> list[tuple]:
    """The table's rows: step rows by dataset and mu, then the others."""
    rows = cells[STUDY_ROW].drop_duplicates()
    rows = rows.assign(step=rows["imbalance"] != "step").sort_values(["step", "imbalance", "dataset", "mu", "rho"])
    return [tuple(row) for row in rows[STUDY_ROW].itertuples(index=False)]


def wide_table(cells: pd.DataFrame, tests: pd.DataFrame, methods: Sequence[str], rows: Sequence[tuple]) -> tuple[str, str, str]:
    """Markdown of the F1 table (mean ± std (rank) per method, mean rank last), of the minority-class F1 table (mean
    (rank), mean rank last) and of the paired tests against AOS."""
    by_cell = cells.set_index([*STUDY_ROW, "method"])
    by_test = tests.set_index([*STUDY_ROW, "method"])
    f1, minority, paired = [], [], []
    for row in rows:
        label = {"row": study_row_label(*row)}
        f1.append(label | {display(m): f1_text(by_cell, (*row, m)) for m in methods})
        minority.append(label | {display(m): minority_text(by_cell, (*row, m)) for m in methods})
        paired.append(label | {display(m): paired_text(by_test, (*row, m)) for m in methods if m != REFERENCE})
    ranks = cells.groupby("method")[["rank", "minority_rank"]].mean()
    if ranks.notna().any(axis=None):  # not for trimmed runs (unranked)
        f1.append({"row": "mean rank"} | {display(m): f"{ranks.loc[m, 'rank']:.2f}" for m in methods})
        minority.append({"row": "mean rank"} | {display(m): f"{ranks.loc[m, 'minority_rank']:.2f}" for m in methods})
    return markdown_table(pd.DataFrame(f1)), markdown_table(pd.DataFrame(minority)), markdown_table(pd.DataFrame(paired))


def f1_text(by_cell: pd.DataFrame, key: tuple) -> str:
    """'82.31 ± 1.20 (3)': mean ± std over seeds and the rank in its row, TUNED after it where the method trained at
    its own lr_scale; empty where not run."""
    if key not in by_cell.index:
        return ""
    cell = by_cell.loc[key]
    std = "" if pd.isna(cell["std"]) else f" ± {cell['std']:.2f}"
    return f"{cell['mean']:.2f}{std}{rank_text(cell['rank'])}{TUNED if cell['lr_scale'] != 1 else ''}"


def minority_text(by_cell: pd.DataFrame, key: tuple) -> str:
    """'61.20 (3)': mean minority-class F1 over seeds and its rank in the row; empty where not run or not logged."""
    if key not in by_cell.index or pd.isna(by_cell.loc[key, "minority_mean"]):
        return ""
    cell = by_cell.loc[key]
    return f"{cell['minority_mean']:.2f}{rank_text(cell['minority_rank'])}"


def rank_text(rank: float) -> str:
    """' (3)': a rank in its row; '' where the table is unranked (trimmed runs)."""
    return "" if pd.isna(rank) else f" ({rank:.0f})"


def unranked(cells: pd.DataFrame, tests: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`cells` and `tests` without what trimmed runs cannot support: ranks and p-values blanked."""
    return cells.assign(rank=np.nan, minority_rank=np.nan), tests.assign(p_vs_aos=np.nan)


def paired_text(by_test: pd.DataFrame, key: tuple) -> str:
    """'-1.23, p=0.062 (n=5)': mean of method − AOS over n paired seeds and the sign-flip p-value; empty without pairs."""
    if key not in by_test.index or not by_test.loc[key, "pairs"]:
        return ""
    test = by_test.loc[key]
    p = "" if pd.isna(test["p_vs_aos"]) else f", p={test['p_vs_aos']:.3f}"
    return f"{test['minus_aos']:+.2f}{p} (n={int(test['pairs'])})"


def methods_figure(cells: pd.DataFrame, runs: pd.DataFrame, methods: Sequence[str], rows: Sequence[tuple], title: str) -> plt.Figure:
    """F1 per row and method: bars = mean, error bars = std over seeds, dots = each run, † above a cell trained at its
    method's own lr_scale (TUNED)."""
    fig, axis = plt.subplots(figsize=(PAGE_WIDTH, 5.5))
    width = 0.85 / len(methods)
    by_cell = cells.set_index([*STUDY_ROW, "method"])
    for i, method in enumerate(methods):
        cell = by_cell.reindex([(*row, method) for row in rows])
        x = np.arange(len(rows)) + (i - (len(methods) - 1) / 2) * width
        axis.bar(x, cell["mean"], width, yerr=cell["std"].fillna(0), capsize=2, label=display(method))
        for position, row in zip(x, rows, strict=True):
            seeds = runs.merge(pd.DataFrame([dict(zip(STUDY_ROW, row, strict=True), method=method)]), on=[*STUDY_ROW, "method"])["f1"]
            axis.plot([position] * len(seeds), seeds, ".", color="0.25", markersize=3)
        tuned = (cell["lr_scale"] != 1) & cell["mean"].notna()
        for position, top in zip(x[tuned.to_numpy()], (cell["mean"] + cell["std"].fillna(0))[tuned], strict=True):
            axis.annotate(TUNED.strip(), (position, top), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                          fontsize=11, fontweight="bold")  # 2 points above the error bar, whatever the scale
    axis.set(xticks=range(len(rows)), ylabel="test macro-F1 (%)")
    axis.set_xticklabels([study_row_label(*row) for row in rows], rotation=15, ha="right", fontsize=9)
    if (cells["lr_scale"] != 1).any():
        title += f"\n{TUNED.strip()} = trained at its method's own lr (method.lr_scale x the recipe's train.lr)"
    axis.set_title(title, fontsize=10, pad=48)  # room for the legend between title and axes
    axis.legend(fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=min(len(methods), 5), frameon=False)
    fig.tight_layout()
    return fig


def write_methods(name: str, parents: Sequence[mlflow.entities.Run], runs: pd.DataFrame, sweeps: str, out: Path) -> list[Path]:
    """The methods study: one column per method (mean ± std and rank per row) and each method tested against AOS."""
    runs, replaced = later_sweeps_win(runs, parents, [*STUDY_ROW, "method", "seed"])
    runs = one_run_each(runs, sweeps, [*STUDY_ROW, "method", "seed"])
    methods, cells, tests = method_order(runs["method"].unique()), method_cells(runs), against_reference(runs)
    rows, trimmed = rows_in_order(cells), runs["trimmed"].any()
    cells, tests = unranked(cells, tests) if trimmed else (cells, tests)
    f1, minority, paired = wide_table(cells, tests, methods, rows)
    steps = runs.groupby(STUDY_ROW, dropna=False)["steps"].nunique()
    unequal = "" if (steps <= 1).all() else "\n**Optimizer steps differ between the methods of a row**: see `_runs.csv`.\n"
    tuned = cells[cells["lr_scale"] != 1]
    if not tuned.empty:  # no reader may take a tuned cell for one at the recipe's settings
        scales = ", ".join(f"{display(m)} {s:g} x" for m, s in tuned.groupby("method")["lr_scale"].max().items())
        unequal += (f"\n**{TUNED.strip()} trained at its method's own learning rate** ({scales} the recipe's `train.lr`: "
                    "`method.lr_scale`, conf/method/; why: results/README.md); every other cell at the recipe's.\n")
    ranked = "" if trimmed else " (rank in the row)"
    test = ("no p-value: trimmed runs." if trimmed else """the two-sided p-value of an
exact sign-flip permutation test of a zero mean difference. With n seeds no p-value can fall below 2 / 2^n
(0.0625 for 5 seeds).""")
    text = f"""{header(name, f"test macro-F1 (%) per method, mean ± std over seeds{ranked}", parents, runs, replaced)}
- every method of a row trains on the same imbalanced subsets (one per seed) for the same number of optimizer steps;
  step imbalance: mu = fraction of minority classes; exp: long-tailed class sizes; rho = largest / smallest class;
  none: the training split's own class sizes.
{unequal}
{f1}

## The minority classes: mean F1 over a row's minority classes (%), mean over seeds{ranked}

The paper's claim is about the minority classes: `test_f1_minority`, the mean test F1 of the classes the imbalance
shrank, as each run logged it.

{minority}

## Each method against AOS, paired by seed

Mean difference of F1 (percentage points), method − AOS, over the seeds both ran, and {test}

{paired}
"""
    table = cells.merge(tests, on=[*STUDY_ROW, "method"], how="left")
    figure = mark_trimmed(methods_figure(cells, runs, methods, rows, f"{name}: mean ± std over seeds, dots: runs"), runs)
    return write_files(out, name, text, table, figure, runs, [*STUDY_ROW, "method", "seed", "f1", "f1_minority", "steps", "lr_scale"])


def paper_eps(dataset: str, mu: float, rho: float) -> float | None:
    """The eps of the paper's table that has this dataset, mu and rho; None if it has none."""
    for spec in PAPER.values():
        if any(tuple(row[:3]) == (dataset, mu, rho) for row in spec["rows"]):
            return spec["eps"]
    return None


def grid_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per eps and p: F1 mean, std and seeds."""
    return runs.groupby(GRID)["f1"].agg(mean="mean", std="std", seeds="count").reset_index()


def heatmap(cells: pd.DataFrame, marked_eps: float | None, title: str) -> plt.Figure:
    """Mean macro-F1 over eps (columns) x p (rows), each cell annotated, the paper's eps column outlined."""
    means = cells.pivot(index="p", columns="eps", values="mean")
    fig, axis = plt.subplots(figsize=(1.2 + 1.1 * means.shape[1], 1.4 + 0.7 * means.shape[0]))
    image = axis.imshow(means.to_numpy(), cmap="viridis", origin="lower", aspect="auto")
    for (i, j), value in np.ndenumerate(means.to_numpy()):
        if pd.notna(value):
            axis.text(j, i, f"{value:.1f}", ha="center", va="center", color="w" if value < np.nanmean(means) else "k", fontsize=9)
    eps_labels = [f"{e:g}" + ("\n(paper)" if marked_eps is not None and np.isclose(e, marked_eps) else "") for e in means.columns]
    axis.set(xticks=range(means.shape[1]), yticks=range(means.shape[0]), xlabel="eps (FGSM step, [0, 1] pixels)", ylabel="p")
    axis.set_xticklabels(eps_labels)
    axis.set_yticklabels([f"{p:g}" for p in means.index])
    if marked_eps is not None and np.isclose(means.columns, marked_eps).any():
        column = int(np.flatnonzero(np.isclose(means.columns, marked_eps))[0])
        axis.add_patch(plt.Rectangle((column - 0.5, -0.5), 1, means.shape[0], fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=axis, label="mean test macro-F1 (%)")
    axis.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_sensitivity(name: str, parents: Sequence[mlflow.entities.Run], runs: pd.DataFrame, sweeps: str, out: Path) -> list[Path]:
    """The AOS sensitivity study: mean macro-F1 over the eps x p grid of one row, the paper's eps marked."""
    runs = one_run_each(runs[runs["method"] == REFERENCE], sweeps, [*STUDY_ROW, *GRID, "seed"])
    settings = runs[STUDY_ROW].drop_duplicates()
    if len(settings) != 1:
        raise ValueError(f"sweep {sweeps} has {len(settings)} dataset/imbalance rows: the sensitivity heatmap holds one")
    row = tuple(settings.iloc[0])
    marked = paper_eps(row[0], row[2], row[3])
    cells = grid_cells(runs)
    texts = cells.assign(text=[f"{m:.2f}" + ("" if pd.isna(s) else f" ± {s:.2f}") for m, s in zip(cells["mean"], cells["std"], strict=True)])
    wide = texts.pivot(index="p", columns="eps", values="text").fillna("")
    wide.columns = [f"eps={e:g}" + (" (paper)" if marked is not None and np.isclose(e, marked) else "") for e in wide.columns]
    best = cells.loc[cells["mean"].idxmax()]
    best_line = f"Best cell: eps = {best['eps']:g}, p = {best['p']:g}, {best['mean']:.2f} ± {best['std']:.2f}."
    best_line = "No best cell: trimmed runs." if runs["trimmed"].any() else best_line
    fewest, most = cells["seeds"].min(), cells["seeds"].max()
    seeds = f"{most} seeds" if fewest == most else f"{fewest} to {most} seeds (a cell with fewer did not finish them all)"
    paper_line = f"the paper's eps = {marked:g} (it gives no p)" if marked is not None else "no paper eps for this row"
    text = f"""{header(name, f"AOS test macro-F1 (%) over eps x p, {study_row_label(*row)}", parents, runs)}
- cells: mean ± std over {seeds}; eps = FGSM step in [0, 1] pixel units,
  p = probability that a minority image of a batch is attacked; marked: {paper_line}.

{markdown_table(wide.reset_index().assign(p=lambda f: fmt("g", f["p"])))}

{best_line}
"""
    figure = mark_trimmed(heatmap(cells, marked, f"{name}: AOS mean macro-F1, {study_row_label(*row)}"), runs)
    return write_files(out, name, text, cells, figure, runs, [*STUDY_ROW, *GRID, "seed", "f1", "steps"])
