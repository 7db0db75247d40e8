"""The paper's layout (Tables 1 and 2): F1 per row and method beside the paper's published values, AOS paired with ROS
and BASE seed by seed, the noise floor of a sweep run under several thread counts, and the figure."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from aos_bench.paths import PAPER
from aos_bench.registry import display
from aos_bench.report.figures import figure, mark_trimmed, per_class, per_class_row
from aos_bench.report.markdown import fmt, markdown_table, row_label, trimmed_note
from aos_bench.report.pages import header, write_files
from aos_bench.report.runs import METHODS, ROW, one_table, per_seed
from aos_bench.report.stats import DIFFERENCES, noise, noise_of_differences, paired


def paper_values() -> pd.DataFrame:
    """The paper's published F1, both tables, as lines of dataset, mu, rho, method, paper, paper_eps, paper_table."""
    lines = [
        (dataset, mu, rho, method, value, spec["eps"], table)
        for table, spec in PAPER.items()
        for dataset, mu, rho, *values in spec["rows"]
        for method, value in zip(METHODS, values, strict=True)
    ]
    return pd.DataFrame(lines, columns=[*ROW, "method", "paper", "paper_eps", "paper_table"])


def cells(runs: pd.DataFrame, preset: str) -> pd.DataFrame:
    """One line per row and method: F1 mean, std and seeds, steps per run, the paper's value and ours minus it, a note.

    A row run at a setting of the paper (dataset, mu, rho and AOS's eps) gets its published value whatever the
    preset; the preset's own table also lists its rows that were not run.
    """
    groups = runs.groupby(ROW + ["method"], dropna=False)
    ours = groups["f1"].agg(mean="mean", std="std", seeds="count").reset_index()
    ours["steps"] = groups["steps"].agg(lambda s: "/".join(str(int(v)) for v in sorted(s.unique()))).to_numpy()
    # a row's eps is the one AOS ran with (BASE and ROS ignore it)
    eps = runs[runs["method"] == "aos"].groupby(ROW, dropna=False)["eps"].first().rename("eps").reset_index()
    table = ours.merge(eps, on=ROW, how="left").merge(paper_values(), on=[*ROW, "method"], how="outer")
    table = table[table["mean"].notna() | (table["paper_table"] == preset)].reset_index(drop=True)
    other_eps = table["eps"].notna() & table["paper_eps"].notna() & ~np.isclose(table["eps"], table["paper_eps"])
    table.loc[other_eps, "paper"] = np.nan  # a different eps is not the paper's setting
    table["eps"] = table["eps"].fillna(table["paper_eps"])
    table["diff"] = table["mean"] - table["paper"]
    table["note"] = notes(table, other_eps)
    table.loc[table["paper"].isna(), "paper_table"] = np.nan
    return in_paper_order(table.drop(columns="paper_eps"), preset)


def notes(table: pd.DataFrame, other_eps: pd.Series) -> pd.Series:
    """Why a line needs a second look: not run, fewer seeds than the table's most, steps unequal within its row, other eps."""
    most = table["seeds"].max()
    unequal = table.groupby(ROW, dropna=False)["steps"].transform(lambda s: s.dropna().nunique() > 1)
    text = [
        "; ".join(
            note
            for note, flagged in (
                ("not run", pd.isna(seeds)),
                (f"{seeds:.0f} of {most:.0f} seeds", pd.notna(seeds) and seeds < most),
                ("steps differ between the row's methods", bad_steps),
                ("eps differs from the paper's: no paper value", bad_eps),
            )
            if flagged
        )
        for seeds, bad_steps, bad_eps in zip(table["seeds"], unequal, other_eps, strict=True)
    ]
    return pd.Series(text, index=table.index)


def in_paper_order(table: pd.DataFrame, preset: str) -> pd.DataFrame:
    """`table` sorted as the paper lists rows (by mu, then its dataset order), methods as BASE, ROS, AOS."""
    datasets = [row[0] for row in PAPER[preset]["rows"]] if preset in PAPER else sorted(table["dataset"].unique())
    dataset_rank = {name: rank for rank, name in enumerate(dict.fromkeys(datasets))}
    method_rank = {name: rank for rank, name in enumerate(METHODS)}
    order = np.lexsort((table["method"].map(method_rank), table["rho"], table["dataset"].map(dataset_rank), table["mu"]))
    return table.iloc[order].reset_index(drop=True)


def ordering(means: Mapping[str, float]) -> str:
    """The methods from best to worst F1, e.g. 'AOS > ROS > BASE'; empty unless all three have a value."""
    if not all(pd.notna(means.get(method)) for method in METHODS):
        return ""
    return " > ".join(display(m) for m in sorted(METHODS, key=lambda m: -means[m]))


def comparisons(runs: pd.DataFrame, table: pd.DataFrame, spread: pd.DataFrame) -> pd.DataFrame:
    """Per row: AOS minus ROS and minus BASE over the seeds both ran (mean, p-value, pairs), and whose ordering holds.

    With a noise sweep's `spread`, AOS − ROS is also flagged when it is smaller than the row's within-seed spread.
    """
    lines = []
    for key, row in table.groupby(ROW, sort=False, dropna=False):
        line = dict(zip(ROW, key, strict=True))
        by_seed = runs.merge(pd.DataFrame([line]), on=ROW).pivot(index="seed", columns="method", values="f1")
        for other in ("ros", "base"):
            line[f"aos_minus_{other}"], line[f"p_aos_vs_{other}"], line[f"pairs_aos_{other}"] = paired(by_seed, "aos", other)
        line["order"] = ordering(dict(zip(row["method"], row["mean"], strict=True)))
        line["paper_order"] = ordering(dict(zip(row["method"], row["paper"], strict=True)))
        line["paper_order_holds"] = line["order"] == line["paper_order"] if line["order"] and line["paper_order"] else None
        if not spread.empty:
            within = spread.merge(pd.DataFrame([dict(zip(ROW, key, strict=True))]), on=ROW).query("method in ['aos', 'ros']")["within"].max()
            line["within_seed_spread"] = within
            line["below_within_seed_spread"] = abs(line["aos_minus_ros"]) < within if pd.notna(within) else None
        lines.append(line)
    return pd.DataFrame(lines)


def unranked(pairs: pd.DataFrame) -> pd.DataFrame:
    """`pairs` without what trimmed runs cannot support: p-values, our ordering and whether the paper's holds blanked."""
    blanked = {"p_aos_vs_ros": np.nan, "p_aos_vs_base": np.nan, "order": "", "paper_order_holds": None}
    return pairs.assign(**{key: value for key, value in blanked.items() if key in pairs})


def paired_cells(diffs: pd.Series, pairs: pd.Series) -> list[str]:
    """'+1.23 (n=5)': mean differences over n pairs; empty without pairs."""
    return [f"{value:+.2f} (n={n})" if n else "" for value, n in zip(diffs, pairs, strict=True)]


def agreement(table: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """One line: mean |ours − paper| over the measured cells that have a paper value, and rows keeping the paper's order."""
    measured = table.dropna(subset=["mean", "paper"])
    judged = pairs["paper_order_holds"].dropna()
    if measured.empty:
        return "no measured cell has a paper value to compare with."
    return (
        f"mean |ours − paper| = {measured['diff'].abs().mean():.2f} F1 points over {len(measured)} measured cells; "
        f"the paper's ordering holds in {int(judged.sum())} of {len(judged)} rows with all three methods measured."
    )


def noise_section(spread: pd.DataFrame, differences: pd.DataFrame) -> str:
    """The noise floor: within- against between-seed spread per row and method, and the seeds a difference needs."""
    if spread.empty:
        return ""
    floor = pd.DataFrame(
        {
            "dataset": spread["dataset"].map(display),
            "mu": fmt("g", spread["mu"]),
            "method": spread["method"].map(display),
            "seeds": spread["seeds"],
            "within-seed spread (std over thread counts)": fmt(".2f", spread["within"]),
            "between-seed spread (std over seeds)": fmt(".2f", spread["between"]),
        }
    )
    if "stacked_gap" in spread:  # some runs trained in a stack (hydra/launcher=stacked), some alone
        floor = floor.rename(columns={"within-seed spread (std over thread counts)": "within-seed spread (std over float orders)"})
        floor["stacked − separate (RMS over seeds)"] = fmt(".2f", spread["stacked_gap"])
    stacking = ", and both alone and in a stack of models (hydra/launcher=stacked: a float order too)" if "stacked_gap" in spread else ""
    needed = pd.DataFrame(
        {
            "dataset": differences["dataset"].map(display),
            "mu": fmt("g", differences["mu"]),
            "std of AOS − ROS over seeds": fmt(".2f", differences["sd"]),
            **{f"seeds for {d} points": differences[f"seeds_{d}"] for d in DIFFERENCES},
        }
    )
    return f"""
## Noise floor: the same seed under another thread count

Each seed ran once per thread count{stacking}: the same subset, initialisation and batch order, only the order of float
additions differs. Within-seed spread = root mean square over seeds of the std across thread counts; between-seed
spread = std over seeds at one thread count (averaged over thread counts). `below within-seed spread` above flags a
mean AOS − ROS smaller than the larger within-seed spread of the two methods in that row.

{markdown_table(floor)}

Seeds a paired comparison needs to detect a true AOS − ROS difference (two-sided 5%, power 80%, normal approximation
with the measured std of the per-seed difference; never fewer than 6, the sign-flip test's floor):

{markdown_table(needed)}
"""


def markdown(
    name: str, parents: Sequence[mlflow.entities.Run], table: pd.DataFrame, pairs: pd.DataFrame, runs: pd.DataFrame, extra: str = "",
    trimmed: str = "",
) -> str:
    """The report page: where the numbers come from, the per-method table and the paired comparisons; `trimmed`
    (markdown.trimmed_note) marks a page of trimmed runs at its top, and leaves out p-values and orderings."""
    f1 = pd.DataFrame(
        {
            "dataset": table["dataset"].map(display),
            "mu": fmt("g", table["mu"]),
            "rho": fmt("g", table["rho"]),
            "eps": fmt("g", table["eps"]),
            "method": table["method"].map(display),
            "F1 mean": fmt(".2f", table["mean"]),
            "F1 std": fmt(".2f", table["std"]),
            "seeds": fmt(".0f", table["seeds"]),
            "paper": fmt(".2f", table["paper"]),
            "ours − paper": fmt("+.2f", table["diff"]),
            "steps/run": table["steps"].fillna(""),
            "note": table["note"],
        }
    )
    paired = pd.DataFrame(
        {
            "dataset": pairs["dataset"].map(display),
            "mu": fmt("g", pairs["mu"]),
            "rho": fmt("g", pairs["rho"]),
            "AOS − ROS": paired_cells(pairs["aos_minus_ros"], pairs["pairs_aos_ros"]),
            "p (vs ROS)": fmt(".3f", pairs["p_aos_vs_ros"]),
            "AOS − BASE": paired_cells(pairs["aos_minus_base"], pairs["pairs_aos_base"]),
            "p (vs BASE)": fmt(".3f", pairs["p_aos_vs_base"]),
            "ours: best to worst": pairs["order"],
            "paper: best to worst": pairs["paper_order"],
            "paper's order holds": pairs["paper_order_holds"].map({True: "yes", False: "no"}).fillna(""),
        }
    )
    if table["paper"].isna().all():  # no cell has a paper value: no columns for them
        f1 = f1.drop(columns=["paper", "ours − paper"])
        paired = paired.drop(columns=["paper: best to worst", "paper's order holds"])
    tests = """Mean difference of F1 (percentage points) over the seeds both methods ran (each seed = the same imbalanced subset
for every method), and the two-sided p-value of an exact sign-flip permutation test of a zero mean difference.
With n seeds no p-value can fall below 2 / 2^n (0.0625 for 5 seeds): add seeds for a stronger test."""
    agreed = agreement(table, pairs)
    if trimmed:  # means only: a few steps support no test and no ordering
        paired = paired.drop(columns=["p (vs ROS)", "p (vs BASE)", "ours: best to worst", "paper's order holds"], errors="ignore")
        tests = "Mean difference of F1 (percentage points) over the seeds both methods ran; no p-value and no ordering: trimmed runs."
        agreed = "not judged: trimmed runs."
    if "below_within_seed_spread" in pairs:
        paired["below within-seed spread"] = pairs["below_within_seed_spread"].map({True: "yes", False: "no"}).fillna("")
    tables = " and ".join(PAPER[t]["name"] for t in sorted(set(table["paper_table"].dropna())))
    source = (
        f"`paper` = the published values of the paper's {tables} (Wojciechowski and Lango) for the same dataset, mu, "
        "rho and eps, shown for comparison; they are not our measurements."
        if tables
        else "no paper values: no row of this sweep was run at a setting of the paper's tables."
    )
    return f"""{header(name, "test macro-F1 (%) per method, mean and standard deviation over seeds", parents, runs)}
- {source}
- step imbalance: mu = fraction of minority classes, rho = largest / smallest class size, eps = AOS's FGSM step;
  `steps/run` = optimizer steps of each run (equal for the methods of a row, else flagged in `note`).

{markdown_table(f1)}

Agreement with the paper: {agreed}

## AOS against ROS and BASE, paired by seed

{tests}

{markdown_table(paired)}
{extra}"""


def write_paper(
    name: str, parents: Sequence[mlflow.entities.Run], runs: pd.DataFrame, sweeps: str, out: Path, preset: str, row: str | None
) -> list[Path]:
    """The paper's layout of `preset`: <out>/<name>.md, .csv, .png (its per-class half for `row`) and _runs.csv; the four paths."""
    runs = one_table(runs, sweeps)
    seeds, spread = per_seed(runs), noise(runs)
    table = cells(seeds, preset)
    pairs, trimmed = comparisons(seeds, table, spread), trimmed_note(runs)
    pairs = unranked(pairs) if trimmed else pairs
    extra = noise_section(spread, noise_of_differences(runs)) if not spread.empty else ""
    chosen = per_class_row(table, row)
    classes, minority, seed = per_class(runs, chosen)
    titles = (f"{name}: mean ± std over seeds", f"per class (* = minority)\n{row_label(*chosen)}, seed {seed}")
    fig = mark_trimmed(figure(table, runs, classes, minority, titles), runs)
    text = markdown(name, parents, table, pairs, runs, extra, trimmed)
    columns = [*ROW, "eps", "method", "seed", "f1", "steps"]
    return write_files(out, name, text, table.merge(pairs, on=ROW), fig, runs, columns, order=[*ROW, "method", "seed"])
