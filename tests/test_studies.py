"""The studies beyond the paper: every method in one smoke sweep, and the methods and sensitivity report layouts."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import ROOT

from aos_bench import report
from aos_bench.methods import METHODS
from aos_bench.report import studies
from aos_bench.report.figures import mark_trimmed
from aos_bench.report.runs import sweep_runs
from aos_bench.tracking import ensure_experiment


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh SQLite store with the aos_bench experiment, set as the current one; its URI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "aos_bench"))
    return uri


def fake_sweep(uri: str, preset: str, children: list[dict]) -> str:
    """A FINISHED parent run of `preset` whose children log the given params and F1 as jobs do; its id."""
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(mlflow.get_experiment_by_name("aos_bench").experiment_id, tags={"sweep_key": preset, "preset": preset})
    for i, child in enumerate(children):
        f1, error = child.pop("f1"), child.pop("error", None)  # a job with an error ends FAILED, as a diverged one does
        minority = {"test_f1_minority": child.pop("f1_minority")} if "f1_minority" in child else {}
        minority |= {"test_accuracy": child.pop("accuracy")} if "accuracy" in child else {}
        tags = {"mlflow.parentRunId": parent.info.run_id, "config_hash": f"{preset}-{i}"} | ({"error": error} if error else {})
        with mlflow.start_run(tags=tags) as run:
            mlflow.log_params({"recipe.name": "paper", "env.threads": 1, "imbalance.rho": 500, **child})
            mlflow.log_metrics({"test_f1_macro": f1, "train_steps": 100, **minority} if f1 is not None else {})
        if error:
            client.set_terminated(run.info.run_id, "FAILED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def test_methods_report_ranks_each_row_and_tests_every_method_against_aos(tmp_path, store):
    offsets = {"base": -10.0, "aos": 0.0, "focal": 5.0}  # F1 = 80 + offset + seed
    rows = [{"dataset.name": "mnist", "imbalance.kind": "step", "imbalance.mu": 0.3},
            {"dataset.name": "cifar10", "imbalance.kind": "exp", "imbalance.rho": 100}]
    children = [
        {**row, "method.name": method, "seed": seed, "f1": 80 + offset + seed - 40 * (row["dataset.name"] == "cifar10"),
         "f1_minority": 50 - offset + seed}  # the minority classes rank the methods the other way round
        for row in rows
        for method, offset in offsets.items()
        for seed in range(5)
    ]
    sweep = fake_sweep(store, "methods", children)
    paths = report.write_report(store, "aos_bench", sweep, tmp_path / "results")
    assert [p.name for p in paths] == ["methods.md", "methods.csv", "methods.png", "methods_runs.csv"]
    table = pd.read_csv(paths[1])
    mnist = table[table["dataset"] == "mnist"].set_index("method")
    assert mnist.loc["focal", ["mean", "rank"]].tolist() == [87.0, 1] and mnist.loc["base", "rank"] == 3
    assert mnist.loc["base", "std"] == pytest.approx(pd.Series(range(5)).std())
    assert mnist.loc["base", "minus_aos"] == -10 and mnist.loc["base", "p_vs_aos"] == pytest.approx(0.0625)  # 2 / 2^5
    assert pd.isna(mnist.loc["aos", "minus_aos"])
    assert mnist.loc["base", ["minority_mean", "minority_rank"]].tolist() == [62.0, 1] and mnist.loc["focal", "minority_rank"] == 3
    exp_row = table[table["imbalance"] == "exp"]
    assert exp_row["mu"].isna().all() and exp_row["rho"].eq(100).all() and len(exp_row) == 3
    text = paths[0].read_text()
    assert "| row | BASE | AOS | Focal |" in text  # the suite's method order, one column per method
    assert "| MNIST step mu=0.3 rho=500 | 72.00 ± 1.58 (3) | 82.00 ± 1.58 (2) | 87.00 ± 1.58 (1) |" in text
    assert "| CIFAR-10 exp rho=100 | 32.00 ± 1.58 (3) |" in text
    assert "| mean rank | 3.00 | 2.00 | 1.00 |" in text
    minority = text[text.index("## The minority classes") :]
    assert "| MNIST step mu=0.3 rho=500 | 62.00 (1) | 52.00 (2) | 47.00 (3) |" in minority
    assert "| mean rank | 1.00 | 2.00 | 3.00 |" in minority
    assert "| MNIST step mu=0.3 rho=500 | -10.00, p=0.062 (n=5) | +5.00, p=0.062 (n=5) |" in text


def test_sensitivity_report_is_a_heatmap_with_the_papers_eps_marked(tmp_path, store):
    children = [
        {"dataset.name": "mnist", "imbalance.kind": "step", "imbalance.mu": 0.9, "method.name": "aos",
         "method.eps": eps, "method.p": p, "seed": seed, "f1": 50 + 100 * eps + 10 * p + seed}
        for eps in (0.05, 0.1, 0.2)
        for p in (0.5, 1.0)
        for seed in (0, 1)
    ]
    diverged = {**children[-1], "seed": 2, "f1": None, "error": "Diverged: the training loss is nan at step 7"}
    sweep = fake_sweep(store, "aos_sensitivity", [*children, diverged])
    paths = report.write_report(store, "aos_bench", sweep, tmp_path / "results")
    cells = pd.read_csv(paths[1]).set_index(["eps", "p"])
    assert len(cells) == 6 and cells.loc[(0.1, 1.0), "mean"] == pytest.approx(70.5) and (cells["seeds"] == 2).all()
    text = paths[0].read_text()
    assert "**not in the table: 1 job(s) of the sweep without a FINISHED run**" in text  # the diverged job is named
    assert "`dataset.name=mnist imbalance.kind=step imbalance.mu=0.9 method.name=aos method.eps=0.2 method.p=1.0 seed=2`: FAILED, Diverged: the training loss is nan at step 7" in text
    assert "| p | eps=0.05 | eps=0.1 (paper) | eps=0.2 |" in text and "Best cell: eps = 0.2, p = 1" in text
    runs = sweep_runs(mlflow.get_experiment_by_name("aos_bench").experiment_id, sweep)
    figure = studies.heatmap(studies.grid_cells(runs), 0.1, "t")
    outline = [patch for patch in figure.axes[0].patches if not patch.get_fill()]
    assert len(outline) == 1 and outline[0].get_x() == pytest.approx(0.5)  # around the second column, eps = 0.1


def test_every_method_finishes_a_smoke_sweep_and_the_methods_report(tmp_path):
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MPLCONFIGDIR": str(home / "mpl"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's package and conf/, whichever copy is installed
    # ++method.*: multi-step targeted AOS; the other methods ignore the two keys
    args = ["experiment=smoke", "preset=methods", "imbalance.mu=0.3", f"method={','.join(METHODS)}", "seed=0,1",
            "train.max_steps=2", "++method.steps=2", "++method.targeted=true", f"hydra.sweep.dir={tmp_path}/multirun"]
    result = subprocess.run(
        [sys.executable, "-m", "aos_bench", "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["aos_bench"], filter_string="tags.config_hash LIKE '%'")
    assert sorted(runs["params.method.name"]) == sorted(list(METHODS) * 2)
    assert (runs["status"] == "FINISHED").all() and (runs["metrics.train_steps"] == 2).all()
    table = pd.read_csv(tmp_path / "multirun" / "methods.csv")  # the methods layout, chosen by the preset
    assert sorted(table["method"]) == sorted(METHODS) and table["seeds"].eq(2).all()


def test_the_cifar10_lt_preset_finishes_a_smoke_sweep_with_its_schedule_and_report(tmp_path):
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MPLCONFIGDIR": str(home / "mpl"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT)
    args = ["experiment=cifar10_lt", "dataset=synthetic", "train=smoke", "seed=0", "method=ros,ldam_drw", f"hydra.sweep.dir={tmp_path}/multirun"]
    result = subprocess.run(
        [sys.executable, "-m", "aos_bench", "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["aos_bench"], filter_string="tags.config_hash LIKE '%'")
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all() and (runs["metrics.train_steps"] == 6).all()
    assert set(runs["params.train.schedule"]) == {"step"} and set(runs["params.train.nesterov"]) == {"False"}
    assert set(runs["params.imbalance.convention"]) == {"cao2019"} and set(runs["params.imbalance.rho"]) == {"100", "10"}
    assert "top-1 rho=100" in (tmp_path / "multirun" / "cifar10_lt.md").read_text()  # the preset's own layout


def test_a_later_sweep_that_reruns_one_methods_cells_replaces_them_and_the_page_says_so(tmp_path, store):
    row = {"dataset.name": "mnist", "imbalance.kind": "step", "imbalance.mu": 0.9}
    first = fake_sweep(store, "methods", [{**row, "method.name": m, "seed": s, "f1": f1 + s}
                                          for m, f1 in (("aos", 84.0), ("reweight", 1.0)) for s in range(3)])
    rerun = fake_sweep(store, "methods", [{**row, "method.name": "reweight", "method.lr_scale": 0.2, "seed": s, "f1": 79.0 + s} for s in range(3)])
    paths = report.write_report(store, "aos_bench", f"{first},{rerun}", tmp_path)
    page, table = paths[0].read_text(), pd.read_csv(paths[1]).set_index("method")
    assert table.loc["reweight", "mean"] == 80.0 and table.loc["reweight", "lr_scale"] == 0.2 and table.loc["aos", "mean"] == 85.0
    assert f"- **3 runs of an earlier sweep left out: the later sweep `{rerun}` ran the same jobs** (Reweight MNIST step mu=0.9 rho=500);" in page
    assert "| 80.00 ± 1.00 (2) † |" in page
    with pytest.raises(ValueError, match="several runs for one"):  # within one sweep, two runs of one job stay an error
        report.write_report(store, "aos_bench", fake_sweep(store, "methods", [{**row, "method.name": "aos", "seed": 0, "f1": f1} for f1 in (1.0, 2.0)]), tmp_path)


def test_cifar10_lt_report_sets_top1_beside_the_published_figures_and_checks_the_goal(tmp_path, store):
    # top-1 = the first published figure + offset + (seed - 1): BASE on it, LDAM-DRW 2 points above it at rho = 100
    first = {("base", 100): 70.36, ("ldam_drw", 100): 77.03, ("base", 10): 86.39, ("ldam_drw", 10): 88.16}
    offset = {"base": 0.0, "ldam_drw": 2.0}
    def children(dataset: str) -> list[dict]:
        return [
            {"dataset.name": dataset, "imbalance.kind": "exp", "imbalance.rho": rho, "method.name": method, "seed": seed,
             "f1": 50.0 + seed, "accuracy": top1 + offset[method] + seed - 1}
            for (method, rho), top1 in first.items()
            for seed in range(3)
        ]

    sweep = fake_sweep(store, "cifar10_lt", children("cifar10"))
    paths = report.write_report(store, "aos_bench", sweep, tmp_path / "results")
    assert [p.name for p in paths] == ["cifar10_lt.md", "cifar10_lt.csv", "cifar10_lt.png", "cifar10_lt_runs.csv"]
    cells = pd.read_csv(paths[1]).set_index(["rho", "method"])
    assert cells.loc[(100, "base"), "top1"] == pytest.approx(70.36) and cells.loc[(100, "base"), "seeds"] == 3
    assert cells.loc[(100, "ldam_drw"), "minus_published"] == pytest.approx(2.0)
    assert cells.loc[(10, "base"), "published"] == pytest.approx(86.39)
    text = paths[0].read_text()
    assert "| BASE | 70.36 ± 1.00 (3) | 70.36 [1] / 71.23 [2] / 73.17 [3] / 72.84 [4] | +0.00 | 51.00 ± 1.00 |" in text
    assert "BASE at rho = 100: 70.36 over 3 seed(s) against 70.36 published, +0.00 points (goal: within 1.5): held" in text
    assert "LDAM-DRW at rho = 100: 79.03 over 3 seed(s) against 77.03 published, +2.00 points (goal: within 1.5): NOT held" in text
    assert "rho = 100: ours LDAM-DRW > BASE; published LDAM-DRW > BASE (the same order)" in text
    assert "1. Cao et al. 2019, Table 2 (ERM, error 29.64): https://arxiv.org/abs/1906.07413" in text
    other = fake_sweep(store, "cifar10_lt", children("synthetic"))
    text = report.write_report(store, "aos_bench", other, tmp_path / "synthetic")[0].read_text()
    assert "published figures are CIFAR-10's, and it ran on synthetic" in text and "[1]" not in text


def test_trimmed_runs_are_marked_and_get_no_rank_or_p_value_in_any_study_layout(tmp_path, store, capsys):
    # every run logs train_steps = 100 (fake_sweep): a cap of 100 stopped it (trimmed), a cap of 1000 did not
    def methods(cap: int) -> str:
        return fake_sweep(store, "methods", [
            {"dataset.name": "mnist", "imbalance.kind": "step", "imbalance.mu": 0.3, "method.name": method, "seed": seed,
             "f1": f1 + seed, "f1_minority": f1 - seed, "train.max_steps": cap}
            for method, f1 in (("base", 40.0), ("aos", 47.0)) for seed in range(3)])

    full = report.write_report(store, "aos_bench", methods(1000), tmp_path / "full")[0].read_text()
    assert "TRIMMED" not in full and "| mean rank |" in full and "p=0.250" in full
    assert "TRIMMED" not in capsys.readouterr().err
    paths = report.write_report(store, "aos_bench", methods(100), tmp_path / "trimmed")
    page = paths[0].read_text()
    mark = "TRIMMED: 6 of 6 runs stopped at train.max_steps (100 optimizer steps) before their recipe's epochs ran"
    assert page.splitlines()[2].startswith(f"**{mark}") and f"aos_bench: report: methods: {mark}" in capsys.readouterr().err
    assert "| MNIST step mu=0.3 rho=500 | 41.00 ± 1.00 | 48.00 ± 1.00 |" in page  # means and spread, no rank
    assert "mean rank" not in page and "p=" not in page and "| -7.00 (n=3) |" in page
    table = pd.read_csv(paths[1])
    assert table[["rank", "minority_rank", "p_vs_aos"]].isna().all(axis=None) and table["mean"].notna().all()
    runs = sweep_runs(mlflow.get_experiment_by_name("aos_bench").experiment_id, methods(100))
    cells = studies.method_cells(runs)
    rows = studies.rows_in_order(cells)
    figure = mark_trimmed(studies.methods_figure(cells, runs, ["base", "aos"], rows, "t"), runs)
    assert [text.get_text() for text in figure.axes[0].texts if "TRIMMED" in text.get_text()] == ["TRIMMED\n100 steps/run:\nnot a result"]
    untouched = mark_trimmed(studies.methods_figure(cells, runs, ["base", "aos"], rows, "t"), runs.assign(trimmed=False))
    assert not any("TRIMMED" in text.get_text() for text in untouched.axes[0].texts)

    grid = fake_sweep(store, "aos_sensitivity", [
        {"dataset.name": "mnist", "imbalance.kind": "step", "imbalance.mu": 0.9, "method.name": "aos", "method.eps": eps,
         "method.p": 1.0, "seed": seed, "f1": 50 + 100 * eps + seed, "train.max_steps": 100}
        for eps in (0.05, 0.1) for seed in (0, 1)])
    page = report.write_report(store, "aos_bench", grid, tmp_path / "grid")[0].read_text()
    assert "**TRIMMED: 4 of 4 runs" in page and "Best cell" not in page and "No best cell: trimmed runs." in page

    lt = fake_sweep(store, "cifar10_lt", [
        {"dataset.name": "cifar10", "imbalance.kind": "exp", "imbalance.rho": 100, "method.name": method, "seed": seed,
         "f1": 50.0, "accuracy": top1 + seed, "train.max_steps": 100}
        for method, top1 in (("base", 70.0), ("ldam_drw", 77.0)) for seed in range(3)])
    page = report.write_report(store, "aos_bench", lt, tmp_path / "lt")[0].read_text()
    assert "**TRIMMED: 6 of 6 runs" in page and "- not judged: trimmed runs" in page and "- none: trimmed runs are not ranked" in page
    assert "held" not in page and "ours LDAM-DRW > BASE" not in page
