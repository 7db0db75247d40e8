"""Sweeps: the presets, one MLflow parent run per sweep, resume, parallel launchers and the report."""

import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, make_config
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from sweeps import TINY, copy_store, stored, sweep_cli

from aos_bench import report, sweep
from aos_bench.report import figures, paper
from aos_bench.report.runs import METHODS, RECIPE_KEYS, sweep_runs
from aos_bench.tracking import ensure_experiment, flat_params


def test_smoke_preset_end_to_end(tmp_path, env, empty_store, monkeypatch):
    copy_store(empty_store, tmp_path / "mlruns")
    result = sweep_cli(tmp_path, env, "experiment=smoke")
    assert result.returncode == 0, result.stderr
    parents, children = stored(tmp_path)
    assert len(parents) == 1, "one parent run per sweep"
    parent = parents.iloc[0]
    assert (parent["status"], parent["tags.preset"], parent["tags.sweep_dir"]) == ("FINISHED", "smoke", f"{tmp_path}/multirun")
    assert len(children) == 2 * 3 * 2 and (children["status"] == "FINISHED").all()  # mu x method x seed
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    assert sorted(set(children["params.seed"])) == ["0", "1"]
    assert (children["params.data_seed"] == children["params.seed"]).all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"], "report")}
    assert artifacts == {"report/smoke.md", "report/smoke.csv", "report/smoke.png", "report/smoke_runs.csv"}  # the callback's, also in the sweep dir
    assert (tmp_path / "multirun" / "smoke.md").exists()

    monkeypatch.chdir(tmp_path)  # the command's defaults: ./mlruns, the latest sweep
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report.main(["--out", "results"])
    written = pd.read_csv(tmp_path / "results" / "smoke.csv")
    measured = children.astype({"params.imbalance.mu": float}).groupby(["params.imbalance.mu", "params.method.name"])
    expected = measured["metrics.test_f1_macro"].agg(["mean", "std", "count"])
    got = written.set_index(["mu", "method"])[["mean", "std", "seeds"]]
    np.testing.assert_allclose(got.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=1e-5)  # the CSV keeps 6 digits
    assert written["paper"].isna().all() and (written["steps"].astype(str) == "6").all()
    text = (tmp_path / "results" / "smoke.md").read_text()
    assert f"{expected.loc[(0.3, 'aos'), 'mean']:.2f}" in text and "no paper values" in text
    # train=smoke stops each job at train.max_steps = 6: marked in the console, on the page, and no p-value or ordering
    mark = "TRIMMED: 12 of 12 runs stopped at train.max_steps (6 optimizer steps) before their recipe's epochs ran"
    assert f"aos_bench: report: smoke: {mark}" in result.stderr and text.splitlines()[2].startswith(f"**{mark}")
    assert "p (vs ROS)" not in text and "best to worst" not in text and written["p_aos_vs_ros"].isna().all()
    assert (tmp_path / "results" / "smoke.png").stat().st_size > 10_000


def log_child(
    parent: str, method: str, mu: float, seed: int, f1: float, steps: int = 100, recipe: str = "paper", classes=("zero", "one"),
    extra: dict | None = None,
) -> str:
    """A hand-built child run as a job logs it (params as MLflow stores them: strings, plus `extra`), with per-class artifacts."""
    with mlflow.start_run(tags={"mlflow.parentRunId": parent, "config_hash": f"{parent}-{method}-{mu}-{seed}"}) as run:
        params = {"dataset.name": "mnist", "imbalance.mu": mu, "imbalance.rho": 500, "method.name": method, "seed": seed}
        mlflow.log_params({**params, "method.eps": 0.1, "data_seed": seed, "recipe.name": recipe, "env.threads": 1, **(extra or {})})
        mlflow.log_metrics({"test_f1_macro": f1, "train_steps": steps})
        lines = "".join(f"{name},1,1,{90 - 50 * (i % 2)},10\n" for i, name in enumerate(classes))
        mlflow.log_text("class,precision,recall,f1,support\n" + lines, "per_class.csv")
        mlflow.log_dict({"classes": list(classes), "minority_classes": list(range(1, len(classes), 2))}, "class_counts.json")
    return run.info.run_id


def test_report_reads_one_sweep_back_and_compares_it_with_the_paper(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "aos_bench"))
    experiment_id = mlflow.get_experiment_by_name("aos_bench").experiment_id
    client = mlflow.MlflowClient(uri)
    other = client.create_run(experiment_id, tags={"sweep_key": "b", "preset": "table2"}).info.run_id
    log_child(other, "aos", 0.3, 0, 10.0)  # another sweep's run of the same setting: must not leak in
    client.set_terminated(other, "FINISHED")
    ours = client.create_run(experiment_id, tags={"sweep_key": "a", "preset": "table2"}).info.run_id
    values = {("base", 0.3): [80, 82, 84], ("ros", 0.3): [85, 86, 87], ("aos", 0.3): [90, 92, 91],
              ("base", 0.9): [70, 71, 72], ("ros", 0.9): [75, 74, 76], ("aos", 0.9): [80, 81]}
    for (method, mu), f1s in values.items():
        for seed, f1 in enumerate(f1s):
            log_child(ours, method, mu, seed, f1, steps=120 if (method, mu) == ("ros", 0.9) else 100)
    client.set_terminated(log_child(ours, "aos", 0.9, 2, 0.0), "FAILED")  # a failed job: must not count
    client.set_terminated(ours, "FINISHED")  # ended last: the `latest` sweep

    paths = report.write_report(uri, "aos_bench", "latest", tmp_path / "results")
    assert [p.name for p in paths] == ["table2.md", "table2.csv", "table2.png", "table2_runs.csv"]
    table = pd.read_csv(paths[1]).set_index(["dataset", "mu", "method"])
    assert table.loc[("mnist", 0.3, "base"), ["mean", "std", "seeds", "paper"]].tolist() == pytest.approx([82, 2, 3, 83.39])
    assert table.loc[("mnist", 0.3, "base"), "diff"] == pytest.approx(82 - 83.39)
    assert table.loc[("mnist", 0.9, "aos"), ["mean", "seeds"]].tolist() == [80.5, 2]
    assert "2 of 3 seeds" in table.loc[("mnist", 0.9, "aos"), "note"]
    assert "steps differ" in table.loc[("mnist", 0.9, "base"), "note"]
    assert pd.isna(table.loc[("mnist", 0.3, "aos"), "note"])
    assert table.loc[("cifar10", 0.9, "aos"), "note"] == "not run" and table.loc[("cifar10", 0.9, "aos"), "paper"] == 16.26
    row = table.loc[("mnist", 0.3, "aos")]
    # AOS - ROS = 5, 6, 4 over three seeds: all 2^3 sign flips enumerated, 2 of them as extreme
    assert (row["aos_minus_ros"], row["p_aos_vs_ros"], row["pairs_aos_ros"]) == pytest.approx((5, 0.25, 3))
    assert (row["order"], row["paper_order"], row["paper_order_holds"]) == ("AOS > ROS > BASE", "AOS > ROS > BASE", True)
    assert table.loc[("mnist", 0.9, "aos"), "pairs_aos_base"] == 2
    text = paths[0].read_text()
    assert "| MNIST | 0.3 | 500 | 0.1 | BASE | 82.00 | 2.00 | 3 | 83.39 | -1.39 | 100 |  |" in text
    assert "published values of the paper's Table 2" in text
    assert "recipe `paper`" in text and "1 torch thread(s) per job" in text
    measured = table.dropna(subset=["mean", "paper"])
    assert f"mean |ours − paper| = {measured['diff'].abs().mean():.2f} F1 points over 6 measured cells" in text
    assert "the paper's ordering holds in 2 of 2 rows" in text
    per_run = pd.read_csv(paths[3])
    assert len(per_run) == 17 and set(per_run.columns) >= {"method", "seed", "f1", "recipe", "threads"}

    only_other = pd.read_csv(report.write_report(uri, "aos_bench", other, tmp_path / "other")[1])
    assert only_other.dropna(subset=["mean"])[["method", "mean"]].values.tolist() == [["aos", 10.0]]


def one_sweep(uri: str, children, extra: dict | None = None) -> str:
    """A FINISHED parent run of preset table2 with the given (method, mu, seed, f1, recipe, classes) children, each
    logging the params `extra` too; its id."""
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "aos_bench"))
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(mlflow.get_experiment_by_name("aos_bench").experiment_id, tags={"sweep_key": "k", "preset": "table2"})
    for method, mu, seed, f1, recipe, classes in children:
        log_child(parent.info.run_id, method, mu, seed, f1, recipe=recipe, classes=classes, extra=extra)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def test_a_paper_table_of_runs_stopped_at_max_steps_is_marked_trimmed_and_neither_tested_nor_ordered(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    children = [(method, 0.3, seed, f1 + seed, "paper", ("a", "b")) for method, f1 in (("base", 80.0), ("ros", 85.0), ("aos", 90.0)) for seed in range(3)]
    for cap, trimmed in ((100, True), (1000, False)):  # every run took 100 steps (log_child): a cap of 100 stopped it
        paths = report.write_report(uri, "aos_bench", one_sweep(uri, children, {"train.max_steps": cap}), tmp_path / str(cap))
        text, table = paths[0].read_text(), pd.read_csv(paths[1])
        assert ("**TRIMMED: 9 of 9 runs stopped at train.max_steps (100 optimizer steps)" in text) is trimmed
        assert ("p (vs ROS)" in text, "ours: best to worst" in text) == (not trimmed, not trimmed)
        measured = table.dropna(subset=["mean"])
        assert (bool(measured["p_aos_vs_ros"].isna().all()), bool(measured["order"].isna().all())) == (trimmed, trimmed)
        assert "| +5.00 (n=3) |" in text  # the mean difference stays
        assert ("Agreement with the paper: not judged: trimmed runs." in text) is trimmed


def test_report_refuses_a_sweep_that_mixes_two_recipes(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    sweep = one_sweep(uri, [("aos", 0.3, 0, 90.0, "paper", ("a", "b")), ("ros", 0.3, 0, 80.0, "modern", ("a", "b"))])
    with pytest.raises(ValueError, match="mixes the recipes modern, paper"):
        report.write_report(uri, "aos_bench", sweep, tmp_path / "results")


def test_report_refuses_sweeps_whose_recipe_of_one_name_set_different_values(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    recipe = {"model.arch": "lenet", "train.epochs": 10, "train.epoch_size": "balanced", "train.lr": 0.02}
    before = one_sweep(uri, [(m, 0.3, 0, 45.0, "paper", ("a", "b")) for m in METHODS], {**recipe, "dataset.augment.crop_pad": 0})
    after = one_sweep(uri, [(m, 0.9, 0, 55.0, "paper", ("a", "b")) for m in METHODS], {**recipe, "dataset.augment.crop_pad": 4})
    with pytest.raises(ValueError, match=r"recipe paper on mnist ran with dataset\.augment\.crop_pad = 0, 4: one table"):
        report.write_report(uri, "aos_bench", f"{before},{after}", tmp_path / "results")
    assert report.write_report(uri, "aos_bench", before, tmp_path / "results")[0].exists()  # each state alone is a table
    keys = flat_params(make_config("recipe=paper", "dataset=cifar10"))
    for name in RECIPE_KEYS:  # every key the check reads is one a job logs
        assert any(key == name or (name.endswith(".") and key.startswith(name)) for key in keys), name


def test_report_joins_sweeps_of_one_preset_into_one_table(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    first = one_sweep(uri, [(m, 0.3, 0, 90.0, "paper", ("a", "b")) for m in METHODS])
    second = one_sweep(uri, [(m, 0.9, 0, 70.0, "paper", ("a", "b")) for m in METHODS])
    paths = report.write_report(uri, "aos_bench", f"{first},{second}", tmp_path / "results")
    table = pd.read_csv(paths[1]).dropna(subset=["mean"])
    assert sorted(set(table["mu"])) == [0.3, 0.9] and len(table) == 6
    assert first in paths[0].read_text() and second in paths[0].read_text()
    with pytest.raises(ValueError, match="several runs"):  # the same runs twice are not a bigger table
        report.write_report(uri, "aos_bench", f"{first},{first}", tmp_path / "twice")


def test_report_figure_stars_the_minority_digits(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    digits = tuple(str(d) for d in range(10))  # class names that pandas would read back as integers
    sweep = one_sweep(uri, [(m, 0.9, 0, 50.0, "paper", digits) for m in METHODS])
    runs = sweep_runs(mlflow.get_experiment_by_name("aos_bench").experiment_id, sweep)
    table = paper.cells(runs, "table2")
    classes, minority, _ = figures.per_class(runs, ("mnist", 0.9, 500))
    fig = figures.figure(table, runs, classes, minority, ("left", "right"))
    labels = [label.get_text() for label in fig.axes[1].get_xticklabels()]
    assert labels == [f"{d}*" if d % 2 else str(d) for d in range(10)]  # log_child makes the odd classes minority
    fig.canvas.draw()
    legend = fig.axes[1].get_legend().get_window_extent()
    assert legend.y0 >= fig.axes[1].get_window_extent().y1 - 1  # the legend sits above the bars, not over them


def sweep_config(*overrides: str) -> DictConfig:
    """The config a multirun's launching process sees (with its hydra node) for these command-line overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_jobs_differing_in_values_share_one_composition_and_get_the_config_hydra_composes(monkeypatch):
    grid = ["+row=mnist_step_mu0.3,cifar10_exp_rho100", "method=base,aos", "seed=0,1", "train.epochs=2", "hydra/launcher=joblib"]
    config = sweep_config("experiment=methods", "train.epochs=2", "hydra/launcher=joblib")
    config.hydra.overrides.task = ["experiment=methods", *grid]
    composed = []
    monkeypatch.setattr(sweep, "compose", lambda *args, **kwargs: composed.append(kwargs) or compose(*args, **kwargs))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        jobs = sweep.job_configs(config)
        alone = [compose("config", overrides=overrides) for overrides in sweep.job_overrides(config)]
    assert len(jobs) == 8 and len(composed) == 4  # one composition per row and method; the seeds share it
    assert [OmegaConf.to_container(job, resolve=True) for job in jobs] == [OmegaConf.to_container(job, resolve=True) for job in alone]
    assert sorted({(job.dataset.name, job.imbalance.kind, job.method.name, job.seed) for job in jobs}) == [
        (dataset, kind, method, seed) for dataset, kind in [("cifar10", "exp"), ("mnist", "step")] for method in ["aos", "base"] for seed in [0, 1]]


def test_same_command_reopens_its_parent_run_and_force_starts_a_new_one(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    experiment_id = ensure_experiment(uri, "aos_bench")
    client = mlflow.MlflowClient(uri)
    first = sweep.open_parent(sweep_config("experiment=smoke"), client, experiment_id)
    sweep.fail_if_running(uri, first)  # the launching process exits before on_multirun_end
    assert client.get_run(first).info.status == "FAILED" and "resumes" in client.get_run(first).data.tags["error"]
    orphan = client.create_run(experiment_id, tags={"sweep": first}).info.run_id  # a job whose worker was killed
    again = sweep.open_parent(sweep_config("experiment=smoke", f"tracking.uri={uri}"), client, experiment_id)
    assert again == first and client.get_run(first).info.status == "RUNNING"  # where runs go is not the sweep
    assert "error" not in client.get_run(first).data.tags  # why the last launch stopped: not kept by a sweep that ends clean
    assert client.get_run(orphan).info.status == "KILLED"
    other = sweep.open_parent(sweep_config("experiment=smoke", "train.epochs=3"), client, experiment_id)
    assert client.get_run(other).info.run_name == "smoke sweep"  # train.epochs narrows no axis of the grid
    rows = sweep.open_parent(sweep_config("experiment=methods", "+row=mnist_step_mu0.9", "method=reweight"), client, experiment_id)
    assert client.get_run(rows).info.run_name == "methods sweep +row=mnist_step_mu0.9 method=reweight"
    forced = sweep.open_parent(sweep_config("experiment=smoke", "force=true"), client, experiment_id)
    assert len({first, other, forced}) == 3
    assert client.get_run(forced).data.tags["preset"] == "smoke"


def progress_lines(log: str) -> list[tuple[int, int, str, str]]:
    """(k, N, run name, F1) of each `[k/N] <run name>: F1 <value> (<time>); ETA <time>` line, in order; the last has no ETA."""
    found = re.findall(r"\[(\d+)/(\d+)\] (.+?): F1 (\d+\.\d\d) \(\d+m\d\ds\)(; ETA \d+m\d\ds)?$", log, re.MULTILINE)
    assert [bool(eta) for *_, eta in found] == [True] * (len(found) - 1) + [False] * bool(found)
    return [(int(k), int(n), name, f1) for k, n, name, f1, _ in found]


def ended_order(children: pd.DataFrame) -> list[str]:
    """The run names of `children` in the order their runs ended."""
    return children.sort_values("end_time")["tags.mlflow.runName"].tolist()


def test_parallel_sweep_logs_every_run_then_resumes_only_its_missing_jobs(tmp_path, env, empty_store):
    copy_store(empty_store, tmp_path / "mlruns")  # the launching process creates the experiment before 4 jobs start
    args = [*TINY, "method=base", "seed=0,1,2,3"]  # one override sets the number of seeds
    result = sweep_cli(tmp_path, env, *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4")
    assert result.returncode == 0, result.stderr
    assert "locked" not in result.stdout + result.stderr
    parents, children = stored(tmp_path)
    assert sorted(children["params.seed"]) == ["0", "1", "2", "3"] and (children["status"] == "FINISHED").all()
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert (children["params.data_seed"] == children["params.seed"]).all()
    assert parents["tags.mlflow.runName"].tolist() == ["smoke sweep imbalance.mu=0.3 method=base seed=0,1,2,3"]  # its narrowing
    f1 = {row["tags.mlflow.runName"]: row["metrics.test_f1_macro"] for _, row in children.iterrows()}
    assert progress_lines(result.stdout) == [(k, 4, name, f"{f1[name]:.2f}") for k, name in enumerate(ended_order(children), 1)]
    assert all(f"{name}: epoch 1/" in result.stdout for name in f1)  # the 4 workers' epoch lines, each named
    # interrupted: seed 1's worker was killed while it ran (its run left RUNNING), seed 2 never started, the sweep
    # ended FAILED
    client = mlflow.MlflowClient()
    run_of_seed = children.set_index("params.seed")["run_id"]
    client.update_run(run_of_seed["1"], status="RUNNING")
    client.delete_run(run_of_seed["2"])
    client.set_terminated(parents["run_id"].iloc[0], "FAILED")
    assert status_line(tmp_path, env).startswith("4 jobs: 0 queued, 1 running, 2 FINISHED, 0 FAILED, 1 not run; ended ")

    result = sweep_cli(tmp_path, env, *args)  # the same sweep, resumed with the default launcher
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped: this sweep already has a FINISHED run") == 2
    assert "[2/4] done before this launch: their jobs are skipped" in result.stdout
    parents_after, children = stored(tmp_path)
    rerun = children[~children["run_id"].isin(run_of_seed)]
    assert [line[:2] for line in progress_lines(result.stdout)] == [(3, 4), (4, 4)] and len(rerun) == 2
    assert parents_after[["run_id", "status"]].values.tolist() == [[parents["run_id"].iloc[0], "FINISHED"]]
    finished = children[children["status"] == "FINISHED"]
    assert sorted(finished["params.seed"]) == ["0", "1", "2", "3"]
    assert {run_of_seed["0"], run_of_seed["3"]} <= set(finished["run_id"])
    assert sorted(children["status"]) == ["FINISHED"] * 4 + ["KILLED"]  # the resume closed seed 1's orphan run
    assert "resume reruns" in client.get_run(run_of_seed["1"]).data.tags["error"]
    assert status_line(tmp_path, env).startswith("4 jobs: 0 queued, 0 running, 4 FINISHED, 0 FAILED; ended ")  # one run per config


def status_line(tmp_path: Path, env: dict[str, str]) -> str:
    """The counts line of `python -m aos_bench.status` for the latest sweep of the store under tmp_path."""
    command = [sys.executable, "-m", "aos_bench.status", "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[1]


@pytest.mark.slow  # 21 s; CI's `pytest -m slurm` runs the submitit plugin against a real SLURM controller
def test_submitit_local_jobs_nest_under_the_parent(tmp_path, env, empty_store):
    copy_store(empty_store, tmp_path / "mlruns")
    result = sweep_cli(tmp_path, env, *TINY, "method=base", "seed=0", "hydra/launcher=submitit_local")
    assert result.returncode == 0, result.stderr
    parents, children = stored(tmp_path)
    assert children[["status", "tags.mlflow.parentRunId"]].values.tolist() == [["FINISHED", parents["run_id"].iloc[0]]]


def test_noise_report_puts_within_seed_beside_between_seed_spread(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "aos_bench"))
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(mlflow.get_experiment_by_name("aos_bench").experiment_id, tags={"sweep_key": "n", "preset": "noise"})
    # ROS: seeds 80, 82, 84 under 1 thread; under 2 threads -1, +1, -1. AOS: ROS + 0.5 (smaller than the within-seed spread)
    for method, offset in (("ros", 0.0), ("aos", 0.5)):
        for seed, f1 in enumerate([80.0, 82.0, 84.0]):
            for threads, shift in ((1, 0.0), (2, (-1) ** seed * -1.0)):
                with mlflow.start_run(tags={"mlflow.parentRunId": parent.info.run_id, "config_hash": f"{method}{seed}{threads}"}):
                    mlflow.log_params({"dataset.name": "mnist", "imbalance.mu": 0.9, "imbalance.rho": 500, "method.name": method,
                                       "seed": seed, "method.eps": 0.1, "recipe.name": "paper", "env.threads": threads})
                    mlflow.log_metrics({"test_f1_macro": f1 + offset + shift, "train_steps": 100})
                    mlflow.log_text("class,precision,recall,f1,support\n0,1,1,90,10\n1,1,1,40,10\n", "per_class.csv")
                    mlflow.log_dict({"classes": ["0", "1"], "minority_classes": [1]}, "class_counts.json")
    client.set_terminated(parent.info.run_id, "FINISHED")
    paths = report.write_report(uri, "aos_bench", parent.info.run_id, tmp_path / "results")
    table = pd.read_csv(paths[1]).set_index("method")
    assert table.loc["ros", "mean"] == pytest.approx(82 + (-1 + 1 - 1) / 6)  # seeds averaged over thread counts first
    assert table.loc["ros", "seeds"] == 3
    text = paths[0].read_text()
    within = np.sqrt(0.5)  # std of (f1, f1 +- 1) = 1 / sqrt(2), the same for every seed
    between = np.mean([np.std([80, 82, 84], ddof=1), np.std([79, 83, 83], ddof=1)])
    assert f"| MNIST | 0.9 | ROS | 3 | {within:.2f} | {between:.2f} |" in text
    assert table.loc["aos", "below_within_seed_spread"]  # AOS − ROS = 0.5 < 0.71
    assert "seeds for 2 points" in text and len(pd.read_csv(paths[3])) == 12
