"""One sweep's MLflow runs -> the paper's table: F1 mean and spread over seeds, paired tests, the paper's values, a plot.

    python -m aos_bench.report [--tracking-uri URI] [--experiment NAME] [--sweep RUN_ID|latest] [--out results/]

writes <out>/<preset>.md, .csv, .png and _runs.csv for the sweep (an MLflow parent run made by aos_bench.sweep):
the paper's table layout, or for the presets methods, compare and aos_sensitivity the layout of aos_bench.studies.
"""

import argparse
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from scipy import stats  # noqa: E402

from aos_bench.__main__ import CONFIG_DIR  # noqa: E402
from aos_bench.tracking import require_server, tracking_uri  # noqa: E402

METRIC = "test_f1_macro"  # the tables' F1, in percent (the paper does not name its average; macro weighs every class alike)
MINORITY_METRIC = "test_f1_minority"  # mean F1 over the minority classes, in percent: the classes the paper's claim is about
METHODS = ("base", "ros", "aos")  # the paper's column order
ROW = ["dataset", "mu", "rho"]  # one table row; method and seed vary within it
NAMES = {
    "mnist": "MNIST", "cifar10": "CIFAR-10", "intel": "Intel", "base": "BASE", "ros": "ROS", "aos": "AOS", "rus": "RUS",
    "smote": "SMOTE", "reweight": "Reweight", "focal": "Focal", "ldam_drw": "LDAM-DRW",
    "balanced_softmax": "Bal. softmax", "threshold": "Threshold",
}
UNRECORDED = "unrecorded"  # a param that runs logged before the suite recorded it
# What a recipe sets (conf/recipe_dataset/), as dotted config keys or their prefixes: one table holds one value of each
# per dataset, since two states of one recipe carry the same recipe.name
RECIPE_KEYS = ("model.", "train.epochs", "train.epoch_size", "train.lr", "train.clip_norm", "dataset.augment.", "dataset.image_size")
ENV = ("torch", "device", "threads", "precision", "deterministic")  # env.* params named in a report, as logged by job.run
EXACT_UP_TO = 16  # seeds: the sign-flip test enumerates all 2^n sign patterns up to here, else draws 2^16 of them
DIFFERENCES = (2, 5, 10)  # F1 points: differences whose required number of seeds the noise report gives

# The paper's published values: conf/paper.yaml (data beside the configs, not code)
PAPER = yaml.safe_load((CONFIG_DIR / "paper.yaml").read_text())


def find_sweep(experiment_id: str, sweep: str) -> mlflow.entities.Run:
    """The sweep's parent run: `sweep` is its run id, or `latest` = the one that ended last (or started last, if running)."""
    if sweep != "latest":
        try:
            return mlflow.get_run(sweep)
        except mlflow.exceptions.MlflowException:
            raise LookupError(f"no run {sweep!r} in this store: pass a sweep's parent run id, or latest") from None
    parents = mlflow.search_runs([experiment_id], "tags.sweep_key LIKE '%'")
    if parents.empty:
        raise LookupError("no sweep in this experiment yet: run one, e.g. python -m aos_bench -m experiment=smoke")
    last = parents["end_time"].fillna(parents["start_time"]).idxmax()
    return mlflow.get_run(parents.loc[last, "run_id"])


def sweep_runs(experiment_id: str, sweep_id: str) -> pd.DataFrame:
    """The sweep's FINISHED child runs, the latest per config, as typed columns (MLflow returns params as strings)."""
    runs = mlflow.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{sweep_id}' and attributes.status = 'FINISHED'"
    )
    if runs.empty:
        raise LookupError(f"sweep {sweep_id} has no FINISHED runs")
    # a config run twice in one sweep (two launches racing on a resume) counts once: its latest run
    hashes = runs.sort_values("end_time").reindex(columns=["tags.config_hash"])["tags.config_hash"]
    runs = runs.loc[hashes[~(hashes.notna() & hashes.duplicated(keep="last"))].index]
    columns = ["params.imbalance.mu", "params.imbalance.rho", "params.method.eps", "params.method.p"]
    params = runs.reindex(columns=[*columns, "params.imbalance.kind"])
    return pd.DataFrame(
        {
            "dataset": runs["params.dataset.name"],
            "mu": pd.to_numeric(params["params.imbalance.mu"]),
            "rho": pd.to_numeric(params["params.imbalance.rho"]),
            "imbalance": params["params.imbalance.kind"],
            "eps": pd.to_numeric(params["params.method.eps"]),
            "p": pd.to_numeric(params["params.method.p"]),
            "method": runs["params.method.name"],
            "seed": runs["params.seed"].astype(int),
            "f1": runs[f"metrics.{METRIC}"],
            "f1_minority": runs.reindex(columns=[f"metrics.{MINORITY_METRIC}"])[f"metrics.{MINORITY_METRIC}"],
            "steps": runs["metrics.train_steps"],
            "artifact_uri": runs["artifact_uri"],
            "recipe": recorded(runs, "params.recipe.name"),
            "subset": recorded(runs, "tags.subset_sha256"),
            **{key: recorded(runs, f"params.env.{key}") for key in ENV},
            **{key: runs[f"params.{key}"] for key in (c.removeprefix("params.") for c in runs.columns) if is_recipe_key(key)},
        }
    )


def is_recipe_key(key: str) -> bool:
    """Whether a dotted config key is one the recipe sets (RECIPE_KEYS: a key itself, or below a prefix ending in '.')."""
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in RECIPE_KEYS)


def unfinished(experiment_id: str, sweep_id: str) -> pd.DataFrame:
    """The sweep's jobs with no FINISHED run (diverged, killed or still running): the last run of each config."""
    runs = mlflow.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{sweep_id}' and tags.config_hash LIKE '%'")
    if runs.empty:
        return runs
    done = set(runs.loc[runs["status"] == "FINISHED", "tags.config_hash"])
    runs = runs[~runs["tags.config_hash"].isin(done)].sort_values("start_time")
    return runs.drop_duplicates("tags.config_hash", keep="last")


def recorded(runs: pd.DataFrame, column: str) -> pd.Series:
    """A param or tag column of `runs` as text, UNRECORDED where a run predates it (or no run has it)."""
    return runs.reindex(columns=[column])[column].astype(object).fillna(UNRECORDED)


def one_recipe(runs: pd.DataFrame, sweeps: str) -> pd.DataFrame:
    """`runs` if they ran one recipe, by name and by what it set on each dataset (RECIPE_KEYS); else ValueError naming
    the first key that differs and its values (runs from before a key was logged do not count for it)."""
    recipes = sorted(runs["recipe"].unique())
    if len(recipes) > 1:
        raise ValueError(
            f"sweep {sweeps} mixes the recipes {', '.join(recipes)}: one table holds one recipe; "
            "run each recipe as its own sweep (recipe=<name>) and report each"
        )
    for key in sorted(filter(is_recipe_key, runs.columns)):
        for dataset, values in runs.groupby("dataset")[key]:
            seen = sorted(set(values.dropna().astype(str)))
            if len(seen) > 1:
                raise ValueError(
                    f"sweep {sweeps}: recipe {recipes[0]} on {dataset} ran with {key} = {', '.join(seen)}: one table "
                    "holds one resolved recipe; report the runs of each value as a table of their own"
                )
    return runs


def one_table(runs: pd.DataFrame, sweeps: str) -> pd.DataFrame:
    """`runs` if they make one table: one training subset per row and seed, and one run per row, method, seed and
    thread count; else ValueError."""
    recorded = runs[runs["subset"] != UNRECORDED]
    subsets = recorded.groupby([*ROW, "seed"], dropna=False)["subset"].nunique()
    if (subsets > 1).any():
        row = dict(zip([*ROW, "seed"], subsets[subsets > 1].index[0]))
        raise ValueError(
            f"sweep {sweeps}: the methods of {row} trained on different images (subset_sha256 differs), so their "
            "comparison is not paired; give every method of a seed the same data_seed"
        )
    repeated = runs.duplicated(ROW + ["method", "seed", "threads"])
    if repeated.any():
        raise ValueError(
            f"sweep {sweeps} has several runs for one dataset, mu, rho, method, seed and thread count "
            f"(e.g. {runs[repeated].iloc[0][ROW + ['method', 'seed']].to_dict()}): it varies another setting, "
            "which a paper table has no column for; sweep that setting in separate sweeps"
        )
    return runs


def per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per row, method and seed: F1 averaged over the thread counts a noise sweep ran it with (else as run)."""
    keys = [*ROW, "method", "seed"]
    return runs.groupby(keys, as_index=False, dropna=False).agg(
        f1=("f1", "mean"), steps=("steps", "first"), eps=("eps", "first"), artifact_uri=("artifact_uri", "first")
    )


def seeds_needed(sd: float, difference: float) -> int:
    """Seeds for a paired test to find `difference` with paired-difference sd `sd` (5% two-sided, 80% power), at least 6.

    6 is the sign-flip test's floor: with n seeds no p-value is below 2 / 2^n, which first drops under 0.05 at n = 6.
    """
    return max(6, math.ceil(((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / difference) ** 2))


def noise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per row and method, for sweeps that ran each seed under several thread counts: within- and between-seed spread.

    within = root mean square over seeds of the std across thread counts (same seed and subset, another float order);
    between = std over seeds at one thread count, averaged over the thread counts.
    """
    if runs["threads"].nunique() < 2:
        return pd.DataFrame()
    lines = []
    for key, cell in runs.groupby([*ROW, "method"], sort=False):
        within = np.sqrt(cell.groupby("seed")["f1"].var().mean())
        between = cell.groupby("threads")["f1"].std().mean()
        lines.append({**dict(zip([*ROW, "method"], key)), "within": within, "between": between, "seeds": cell["seed"].nunique()})
    return pd.DataFrame(lines)


def noise_of_differences(runs: pd.DataFrame, other: str = "ros") -> pd.DataFrame:
    """Per row: the std over seeds of AOS minus `other`, at one thread count (averaged over them), and the seeds needed."""
    lines = []
    for key, cell in runs.groupby(ROW, sort=False):
        by_seed = cell.pivot_table(index=["threads", "seed"], columns="method", values="f1")
        if not {"aos", other} <= set(by_seed.columns):
            continue
        sd = (by_seed["aos"] - by_seed[other]).groupby(level="threads").std().mean()
        lines.append({**dict(zip(ROW, key)), "sd": sd, **{f"seeds_{d}": seeds_needed(sd, d) for d in DIFFERENCES}})
    return pd.DataFrame(lines)


def paper_values() -> pd.DataFrame:
    """The paper's published F1, both tables, as lines of dataset, mu, rho, method, paper, paper_eps, paper_table."""
    lines = [
        (dataset, mu, rho, method, value, spec["eps"], table)
        for table, spec in PAPER.items()
        for dataset, mu, rho, *values in spec["rows"]
        for method, value in zip(METHODS, values)
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
        for seeds, bad_steps, bad_eps in zip(table["seeds"], unequal, other_eps)
    ]
    return pd.Series(text, index=table.index)


def in_paper_order(table: pd.DataFrame, preset: str) -> pd.DataFrame:
    """`table` sorted as the paper lists rows (by mu, then its dataset order), methods as BASE, ROS, AOS."""
    datasets = [row[0] for row in PAPER[preset]["rows"]] if preset in PAPER else sorted(table["dataset"].unique())
    dataset_rank = {name: rank for rank, name in enumerate(dict.fromkeys(datasets))}
    method_rank = {name: rank for rank, name in enumerate(METHODS)}
    order = np.lexsort((table["method"].map(method_rank), table["rho"], table["dataset"].map(dataset_rank), table["mu"]))
    return table.iloc[order].reset_index(drop=True)


def sign_flip_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of the paired sign-flip permutation test that the mean difference is zero."""
    if len(diffs) < 2:
        return np.nan
    resamples = np.inf if len(diffs) <= EXACT_UP_TO else 2**EXACT_UP_TO
    return float(stats.permutation_test((diffs,), np.mean, permutation_type="samples", n_resamples=resamples, rng=0).pvalue)


def ordering(means: Mapping[str, float]) -> str:
    """The methods from best to worst F1, e.g. 'AOS > ROS > BASE'; empty unless all three have a value."""
    if not all(pd.notna(means.get(method)) for method in METHODS):
        return ""
    return " > ".join(NAMES[m] for m in sorted(METHODS, key=lambda m: -means[m]))


def comparisons(runs: pd.DataFrame, table: pd.DataFrame, spread: pd.DataFrame) -> pd.DataFrame:
    """Per row: AOS minus ROS and minus BASE over the seeds both ran (mean, p-value, pairs), and whose ordering holds.

    With a noise sweep's `spread`, AOS − ROS is also flagged when it is smaller than the row's within-seed spread.
    """
    lines = []
    for key, row in table.groupby(ROW, sort=False, dropna=False):
        line = dict(zip(ROW, key))
        by_seed = runs.merge(pd.DataFrame([line]), on=ROW).pivot(index="seed", columns="method", values="f1")
        for other in ("ros", "base"):
            both = by_seed.reindex(columns=["aos", other]).dropna()
            diffs = (both["aos"] - both[other]).to_numpy()
            line[f"aos_minus_{other}"] = diffs.mean() if len(diffs) else np.nan
            line[f"p_aos_vs_{other}"] = sign_flip_p(diffs)
            line[f"pairs_aos_{other}"] = len(diffs)
        line["order"] = ordering(dict(zip(row["method"], row["mean"])))
        line["paper_order"] = ordering(dict(zip(row["method"], row["paper"])))
        line["paper_order_holds"] = line["order"] == line["paper_order"] if line["order"] and line["paper_order"] else None
        if not spread.empty:
            within = spread.merge(pd.DataFrame([dict(zip(ROW, key))]), on=ROW).query("method in ['aos', 'ros']")["within"].max()
            line["within_seed_spread"] = within
            line["below_within_seed_spread"] = abs(line["aos_minus_ros"]) < within if pd.notna(within) else None
        lines.append(line)
    return pd.DataFrame(lines)


def fmt(spec: str, values: pd.Series) -> list[str]:
    """Each value formatted with `spec` (e.g. '.2f'), a missing one as an empty cell."""
    return ["" if pd.isna(value) else format(value, spec) for value in values]


def markdown_table(frame: pd.DataFrame) -> str:
    """`frame` as a GitHub markdown table (cells already formatted as text)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def row_label(dataset: str, mu: float, rho: float) -> str:
    """'MNIST mu=0.3 rho=500'; 'folder' for a row without imbalance settings."""
    return f"{NAMES.get(dataset, dataset)}{settings_text(mu, rho)}"


def settings_text(mu: float, rho: float) -> str:
    """' mu=0.3 rho=500', without the settings a row has not (exp has no mu, none has neither)."""
    return "".join(f" {name}={value:g}" for name, value in (("mu", mu), ("rho", rho)) if pd.notna(value))


def paired_cells(diffs: pd.Series, pairs: pd.Series) -> list[str]:
    """'+1.23 (n=5)': mean differences over n pairs; empty without pairs."""
    return [f"{value:+.2f} (n={n})" if n else "" for value, n in zip(diffs, pairs)]


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


def environment(runs: pd.DataFrame) -> str:
    """What the runs ran on, from their env.* params: each value once, several when the runs differ."""
    values = {key: ", ".join(sorted(set(map(str, runs[key])))) for key in ("recipe", *ENV)}
    return (
        f"recipe `{values['recipe']}`; torch {values['torch']} on {values['device']}, {values['threads']} torch "
        f"thread(s) per job, precision {values['precision']}, deterministic algorithms {values['deterministic']}"
    )


def noise_section(spread: pd.DataFrame, differences: pd.DataFrame) -> str:
    """The noise floor: within- against between-seed spread per row and method, and the seeds a difference needs."""
    if spread.empty:
        return ""
    floor = pd.DataFrame(
        {
            "dataset": spread["dataset"].map(lambda d: NAMES.get(d, d)),
            "mu": fmt("g", spread["mu"]),
            "method": spread["method"].map(NAMES),
            "seeds": spread["seeds"],
            "within-seed spread (std over thread counts)": fmt(".2f", spread["within"]),
            "between-seed spread (std over seeds)": fmt(".2f", spread["between"]),
        }
    )
    needed = pd.DataFrame(
        {
            "dataset": differences["dataset"].map(lambda d: NAMES.get(d, d)),
            "mu": fmt("g", differences["mu"]),
            "std of AOS − ROS over seeds": fmt(".2f", differences["sd"]),
            **{f"seeds for {d} points": differences[f"seeds_{d}"] for d in DIFFERENCES},
        }
    )
    return f"""
## Noise floor: the same seed under another thread count

Each seed ran once per thread count: the same subset, initialisation and batch order, only the order of float
additions differs. Within-seed spread = root mean square over seeds of the std across thread counts; between-seed
spread = std over seeds at one thread count (averaged over thread counts). `below within-seed spread` above flags a
mean AOS − ROS smaller than the larger within-seed spread of the two methods in that row.

{markdown_table(floor)}

Seeds a paired comparison needs to detect a true AOS − ROS difference (two-sided 5%, power 80%, normal approximation
with the measured std of the per-seed difference; never fewer than 6, the sign-flip test's floor):

{markdown_table(needed)}
"""


def provenance(parents: Sequence[mlflow.entities.Run]) -> str:
    """Markdown lines naming each sweep the table comes from: its parent run id, status and launching command."""
    return "\n".join(
        f"- sweep `{parent.info.run_id}` ({parent.info.status}), last launched as "
        f"`python -m aos_bench -m {parent.data.tags.get('sweep_command')}` into `{parent.data.tags.get('sweep_dir')}`;"
        for parent in parents
    )


JOB_SETTINGS = ["dataset.name", "imbalance.kind", "imbalance.mu", "method.name", "method.eps", "method.p", "seed"]


def missing_jobs(parents: Sequence[mlflow.entities.Run]) -> str:
    """Markdown lines naming each job of the sweeps without a FINISHED run (its settings, status and error), or ''."""
    jobs = pd.concat([unfinished(p.info.experiment_id, p.info.run_id) for p in parents], ignore_index=True)
    if jobs.empty:
        return ""
    lines = []
    for _, job in jobs.iterrows():
        settings = " ".join(f"{key}={job[f'params.{key}']}" for key in JOB_SETTINGS if pd.notna(job.get(f"params.{key}")))
        error = job.get("tags.error")
        lines.append(f"  - `{settings}`: {job['status']}" + (f", {error}" if isinstance(error, str) else ""))
    return f"\n- **not in the table: {len(jobs)} job(s) of the sweep without a FINISHED run** (the last run of each):\n" + "\n".join(lines)


def markdown(
    name: str, parents: Sequence[mlflow.entities.Run], table: pd.DataFrame, pairs: pd.DataFrame, runs: pd.DataFrame, extra: str = ""
) -> str:
    """The report page: where the numbers come from, the per-method table and the paired comparisons."""
    f1 = pd.DataFrame(
        {
            "dataset": table["dataset"].map(lambda d: NAMES.get(d, d)),
            "mu": fmt("g", table["mu"]),
            "rho": fmt("g", table["rho"]),
            "eps": fmt("g", table["eps"]),
            "method": table["method"].map(NAMES),
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
            "dataset": pairs["dataset"].map(lambda d: NAMES.get(d, d)),
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
    if "below_within_seed_spread" in pairs:
        paired["below within-seed spread"] = pairs["below_within_seed_spread"].map({True: "yes", False: "no"}).fillna("")
    tables = " and ".join(PAPER[t]["name"] for t in sorted(set(table["paper_table"].dropna())))
    source = (
        f"`paper` = the published values of the paper's {tables} (Wojciechowski and Lango) for the same dataset, mu, "
        "rho and eps, shown for comparison; they are not our measurements."
        if tables
        else "no paper values: no row of this sweep was run at a setting of the paper's tables."
    )
    return f"""# {name}: test macro-F1 (%) per method, mean and standard deviation over seeds

Generated by `python -m aos_bench.report` from MLflow: preset `{parents[0].data.tags.get("preset")}`, {len(runs)} FINISHED runs read back;
- {environment(runs)};
{provenance(parents)}{missing_jobs(parents)}
- {source}
- step imbalance: mu = fraction of minority classes, rho = largest / smallest class size, eps = AOS's FGSM step;
  `steps/run` = optimizer steps of each run (equal for the methods of a row, else flagged in `note`).

{markdown_table(f1)}

Agreement with the paper: {agreement(table, pairs)}

## AOS against ROS and BASE, paired by seed

Mean difference of F1 (percentage points) over the seeds both methods ran (each seed = the same imbalanced subset
for every method), and the two-sided p-value of an exact sign-flip permutation test of a zero mean difference.
With n seeds no p-value can fall below 2 / 2^n (0.0625 for 5 seeds): add seeds for a stronger test.

{markdown_table(paired)}
{extra}"""


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
    cell = runs.merge(pd.DataFrame([dict(zip(ROW, row))]), on=ROW)
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
    """Left: F1 per row and method (bars: mean, error bars: std, dots: each run, black ticks: the paper). Right: per-class F1."""
    rows = [tuple(row) for row in table.loc[table["mean"].notna(), ROW].drop_duplicates().itertuples(index=False)]  # NaN = NaN
    names = list(dict.fromkeys(classes["class"]))
    widths = [2 + 1.5 * len(rows), max(3, 0.4 * len(names))]  # inches
    fig, (left, right) = plt.subplots(1, 2, figsize=(sum(widths) + 1, 4.8), width_ratios=widths)
    width = 0.8 / len(METHODS)
    by_cell = table.set_index([*ROW, "method"])
    for i, method in enumerate(METHODS):
        cell = by_cell.reindex([(*row, method) for row in rows])
        x = np.arange(len(rows)) + (i - 1) * width
        left.bar(x, cell["mean"], width, yerr=cell["std"].fillna(0), capsize=3, label=NAMES[method])
        for position, row in zip(x, rows):
            seeds = runs.merge(pd.DataFrame([dict(zip(ROW, row), method=method)]), on=[*ROW, "method"])["f1"]
            left.plot([position] * len(seeds), seeds, ".", color="0.25", markersize=4, label=None)
        if table["paper"].notna().any():
            left.plot(x, cell["paper"], "k_", markersize=12, mew=2, label="paper" if i == 0 else None)
        per_class_f1 = classes[classes["method"] == method].set_index("class").reindex(names)["f1"]
        right.bar(np.arange(len(names)) + (i - 1) * width, per_class_f1, width, label=NAMES[method])
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


def write_report(uri: str, experiment: str, sweep: str, out: Path, row: str | None = None) -> list[Path]:
    """Write <out>/<preset>.md, .csv, .png and _runs.csv (one line per run) for one sweep, or several (`id1,id2`) of
    one preset and recipe, e.g. a table's CPU rows and its GPU rows; returns the four paths."""
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files: no progress bars
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no experiment {experiment!r} at {uri}")
    parents = [find_sweep(found.experiment_id, one) for one in sweep.split(",")]
    presets = sorted({parent.data.tags.get("preset", "none") for parent in parents})
    if len(presets) > 1:
        raise ValueError(f"--sweep {sweep}: the sweeps come from different presets ({', '.join(presets)}); one table = one preset")
    preset = presets[0]
    name = preset if preset != "none" else "sweep"
    runs = one_recipe(pd.concat([sweep_runs(found.experiment_id, p.info.run_id) for p in parents], ignore_index=True), sweep)
    from aos_bench.studies import LAYOUTS  # here, not at the top: studies builds on this module

    if preset in LAYOUTS:  # the studies beyond the paper's tables have layouts of their own
        return LAYOUTS[preset](name, parents, runs, sweep, out)
    runs = one_table(runs, sweep)
    seeds, spread = per_seed(runs), noise(runs)
    table = cells(seeds, preset)
    pairs = comparisons(seeds, table, spread)
    extra = noise_section(spread, noise_of_differences(runs)) if not spread.empty else ""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.png", out / f"{name}_runs.csv"]
    paths[0].write_text(markdown(name, parents, table, pairs, runs, extra))
    table.merge(pairs, on=ROW).to_csv(paths[1], index=False, float_format="%.6g")
    run_columns = [*ROW, "eps", "method", "seed", "f1", "steps", "recipe", *ENV]
    runs.sort_values([*ROW, "method", "seed"])[run_columns].to_csv(paths[3], index=False, float_format="%.6g")
    chosen = per_class_row(table, row)
    classes, minority, seed = per_class(runs, chosen)
    titles = (f"{name}: mean ± std over seeds", f"per class (* = minority)\n{row_label(*chosen)}, seed {seed}")
    fig = figure(table, runs, classes, minority, titles)
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write one sweep's report."""
    parser = argparse.ArgumentParser(prog="python -m aos_bench.report", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=tracking_uri({}), help="MLflow store (default: %(default)s)")
    parser.add_argument("--experiment", default="aos_bench", help="MLflow experiment (default: %(default)s)")
    parser.add_argument("--sweep", default="latest", help="the sweep's parent run id, several joined by commas, or latest (default)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the files (default: %(default)s)")
    parser.add_argument("--row", help="DATASET,MU of the per-class plot, e.g. mnist,0.9 (default: the largest mu)")
    args = parser.parse_args(argv)
    require_server(args.tracking_uri, "--tracking-uri")
    try:
        paths = write_report(args.tracking_uri, args.experiment, args.sweep, args.out, args.row)
    except (LookupError, ValueError) as error:
        raise SystemExit(f"aos_bench.report: {error}") from None
    print("\n".join(map(str, paths)))


if __name__ == "__main__":
    main()
