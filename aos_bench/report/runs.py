"""Reading a sweep back from MLflow: its parent run, its FINISHED runs as typed columns, and whether they make one table."""

import mlflow
import pandas as pd

METRIC = "test_f1_macro"  # the tables' F1, in percent (the paper does not name its average; macro weighs every class alike)
ACCURACY = "test_accuracy"  # top-1 accuracy on the test set, in percent: the long-tailed literature's figure (balanced test sets)
MINORITY_METRIC = "test_f1_minority"  # mean F1 over the minority classes, in percent: the classes the paper's claim is about
METHODS = ("base", "ros", "aos")  # the paper's column order
ROW = ["dataset", "mu", "rho"]  # one table row; method and seed vary within it
UNRECORDED = "unrecorded"  # a param that runs logged before the suite recorded it
# What a recipe sets (conf/recipe_dataset/), as dotted config keys or their prefixes: one table holds one value of each
# per dataset, since two states of one recipe carry the same recipe.name
RECIPE_KEYS = ("model.", "train.epochs", "train.epoch_size", "train.lr", "train.clip_norm", "dataset.augment.", "dataset.image_size")
ENV = ("torch", "device", "threads", "precision", "deterministic")  # env.* params named in a report, as logged by job.run
# What changes only the order of float additions of one job: a noise sweep reruns each seed under several of these
FLOAT_ORDER = ["threads", "stacked"]


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
    # the run's cap on optimizer steps, train.max_steps (NaN: none, as "None", or a run that did not log it)
    cap = pd.to_numeric(runs.reindex(columns=["params.train.max_steps"])["params.train.max_steps"], errors="coerce")
    columns = ["params.imbalance.mu", "params.imbalance.rho", "params.method.eps", "params.method.p", "params.method.lr_scale"]
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
            "lr_scale": pd.to_numeric(params["params.method.lr_scale"]).fillna(1.0),  # unlogged: trained at the recipe's lr
            "seed": runs["params.seed"].astype(int),
            "f1": runs[f"metrics.{METRIC}"],
            "accuracy": runs.reindex(columns=[f"metrics.{ACCURACY}"])[f"metrics.{ACCURACY}"],
            "f1_minority": runs.reindex(columns=[f"metrics.{MINORITY_METRIC}"])[f"metrics.{MINORITY_METRIC}"],
            "steps": runs["metrics.train_steps"],
            "max_steps": cap,
            # trimmed: stopped at its train.max_steps cap (train=smoke, or any cap below the steps the recipe plans) before
            # the recipe's epochs ran, so its F1 measures a few steps, not a method: the report ranks and tests no such table.
            # A cap equal to the planned steps counts too: the runs log the cap, not the plan.
            "trimmed": cap.notna() & (runs["metrics.train_steps"] >= cap),
            # models trained in one stack (hydra/launcher=stacked); 1 = alone, as every run before the stacked path
            "stacked": pd.to_numeric(runs.reindex(columns=["params.env.stacked_models"])["params.env.stacked_models"]).fillna(1).astype(int),
            "artifact_uri": runs["artifact_uri"],
            "sweep": sweep_id,
            "recipe": recorded(runs, "params.recipe.name"),
            "subset": recorded(runs, "tags.subset_sha256"),
            **{key: recorded(runs, f"params.env.{key}") for key in ENV},
            **{key: runs[f"params.{key}"] for key in (c.removeprefix("params.") for c in runs.columns) if is_recipe_key(key)},
        }
    )


def env_columns(runs: pd.DataFrame) -> list[str]:
    """The environment columns of a _runs.csv: ENV, and `stacked` when some run trained in a stack."""
    return [*ENV, *(["stacked"] if runs["stacked"].max() > 1 else [])]


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
    """`runs` if they make one table: one training subset per row and seed, and one run per row, method, seed and float
    order (FLOAT_ORDER); else ValueError."""
    recorded = runs[runs["subset"] != UNRECORDED]
    subsets = recorded.groupby([*ROW, "seed"], dropna=False)["subset"].nunique()
    if (subsets > 1).any():
        row = dict(zip([*ROW, "seed"], subsets[subsets > 1].index[0], strict=True))
        raise ValueError(
            f"sweep {sweeps}: the methods of {row} trained on different images (subset_sha256 differs), so their "
            "comparison is not paired; give every method of a seed the same data_seed"
        )
    repeated = runs.duplicated(ROW + ["method", "seed", *FLOAT_ORDER])
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
