"""The report's files from a fixed set of runs: every layout rendered and compared, byte for byte, with tests/golden/.

The runs are lines of tests/golden/runs/*_runs.csv (copies of results/ as the split found them, kept apart so that a
rerun table does not change this test's input), logged into a fresh MLflow store as jobs log them (no training), a
few of them changed or left out to reach every note. Parent run ids are random in every store: the
pages name each sweep instead. `AOS_WRITE_GOLDEN=1 pytest tests/test_report_output.py` rewrites the golden files
from the code as it stands, for a change of the report's output that is meant.
"""

import os
from collections.abc import Callable

import mlflow
import pandas as pd
import pytest
from conftest import ROOT
from mlflow.entities import Metric, Param, RunTag

from aos_bench.report import figures, paper, studies, write_report
from aos_bench.report.runs import ENV, per_seed, sweep_runs  # ENV: the env.* params a report reads, which the runs CSVs keep

GOLDEN = ROOT / "tests" / "golden" / "report"
CLASSES = {
    "mnist": [str(digit) for digit in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "intel": ["buildings", "forest", "glacier", "mountain", "sea", "street"],
}
STUDIES = ("methods", "aos_sensitivity")  # presets whose layouts plot no per-class F1
START = 1_700_000_000_000  # ms: runs start one second apart, so that MLflow returns them in one order every time


def lines(file: str, seeds: int, **equal: str) -> pd.DataFrame:
    """Seeds 0 to `seeds` - 1 of tests/golden/runs/<file>_runs.csv whose columns hold the `equal` texts, every value as text."""
    runs = pd.read_csv(GOLDEN.parent / "runs" / f"{file}_runs.csv", dtype=str)
    keep = runs["seed"].astype(int) < seeds
    for column, value in equal.items():
        keep &= runs[column] == value
    return runs[keep].reset_index(drop=True)


def table1() -> pd.DataFrame:
    """Table 1's 18 cells, 2 seeds, less one whole cell (`not run`) and one seed of another (`1 of 2 seeds`)."""
    runs = lines("table1_noaug", 2)
    cell = (runs["dataset"] == "intel") & (runs["mu"] == "0.8") & (runs["method"] == "aos")
    seed = (runs["dataset"] == "cifar10") & (runs["mu"] == "0.6") & (runs["method"] == "ros") & (runs["seed"] == "1")
    return runs[~cell & ~seed]


def smoke() -> pd.DataFrame:
    """One MNIST row at a rho of no paper table (no paper values), ROS with other steps (`steps differ`)."""
    runs = lines("table2", 3, dataset="mnist", mu="0.3").assign(rho="100")
    return runs.assign(steps=runs["steps"].where(runs["method"] != "ros", "1700"))


def methods() -> pd.DataFrame:
    """The methods study's CIFAR-10 exp row and its MNIST step mu = 0.3 row, 3 seeds, a minority F1 for each run;
    re-weighting at its own lr_scale in the exp row (a marked cell)."""
    runs = lines("methods", 3)
    runs = runs[(runs["imbalance"] == "exp") | (runs["mu"] == "0.3")]
    tuned = (runs["imbalance"] == "exp") & (runs["method"] == "reweight")
    return runs.assign(f1_minority=[f"{100 - float(f1):.4f}" for f1 in runs["f1"]], lr_scale=tuned.map({True: "0.2", False: None}))


def sensitivity() -> pd.DataFrame:
    """AOS's sensitivity grid at eps up to 0.1, 2 seeds, and one job that diverged (`not in the table`)."""
    runs = lines("aos_sensitivity", 2)
    runs = runs[runs["eps"].astype(float) <= 0.1]
    diverged = runs.iloc[[-1]].assign(seed="2", f1=None, error="Diverged: the training loss is nan at step 7")
    return pd.concat([runs, diverged], ignore_index=True)


SWEEPS: dict[str, tuple[str, Callable[[], pd.DataFrame]]] = {  # sweep: its preset, its runs
    "table2-mnist": ("table2", lambda: lines("table2", 3, dataset="mnist")),
    "table2-cifar10": ("table2", lambda: lines("table2", 3, dataset="cifar10")),
    "table1": ("table1", table1),
    "noise": ("noise", lambda: lines("noise", 3)),
    "smoke": ("smoke", smoke),
    "methods": ("methods", methods),
    "aos_sensitivity": ("aos_sensitivity", sensitivity),
}
REPORTS = {  # report: its sweeps, --row
    "table2": (["table2-mnist", "table2-cifar10"], None),
    "table1": (["table1"], "intel,0.4"),
    "noise": (["noise"], None),
    "smoke": (["smoke"], None),
    "methods": (["methods"], None),
    "aos_sensitivity": (["aos_sensitivity"], None),
}


def job_params(line: pd.Series) -> dict[str, str]:
    """The params a job logs, from one line of a runs CSV (the columns it has)."""
    params = {
        "dataset.name": line["dataset"],
        "imbalance.kind": line.get("imbalance", "step"),
        "imbalance.mu": line["mu"],
        "imbalance.rho": line["rho"],
        "method.name": line.get("method", "aos"),  # the sensitivity study runs AOS alone
        "method.eps": line.get("eps"),
        "method.p": line.get("p"),
        "method.lr_scale": line.get("lr_scale"),
        "seed": line["seed"],
        "data_seed": line["seed"],
        "recipe.name": line["recipe"],
        **{f"env.{key}": line[key] for key in ENV},
    }
    return {key: value for key, value in params.items() if isinstance(value, str)}


def log_sweep(client: mlflow.MlflowClient, experiment_id: str, name: str, clock: list[int]) -> str:
    """One sweep of SWEEPS as a FINISHED parent run with a child run per line, as jobs log them; its id."""
    preset, runs = SWEEPS[name]
    tags = {"sweep_key": name, "preset": preset, "sweep_command": f"experiment={preset}", "sweep_dir": f"/sweeps/{name}"}
    parent = client.create_run(experiment_id, start_time=START + 1000 * clock[0], tags=tags).info.run_id
    for i, line in runs().iterrows():
        clock[0] += 1
        error = line.get("error")
        tags = {"mlflow.parentRunId": parent, "config_hash": f"{name}-{i}", **({"error": error} if isinstance(error, str) else {})}
        run = client.create_run(experiment_id, start_time=START + 1000 * clock[0], tags=tags).info.run_id
        metrics = {"test_f1_macro": line["f1"], "train_steps": line["steps"], "test_f1_minority": line.get("f1_minority")}
        metrics = {key: float(value) for key, value in metrics.items() if isinstance(value, str)}
        client.log_batch(
            run,
            metrics=[Metric(key, value, START, 0) for key, value in metrics.items()],
            params=[Param(key, value) for key, value in job_params(line).items()],
            tags=[RunTag("mlflow.runName", f"{name}-{i}")],
        )
        if line["seed"] == "0" and preset not in STUDIES:  # the per-class plot reads the first seed every method ran
            log_classes(client, run, line)
        client.set_terminated(run, "FAILED" if isinstance(error, str) else "FINISHED", end_time=START + 1000 * clock[0] + 500)
    clock[0] += 1
    client.set_terminated(parent, "FINISHED", end_time=START + 1000 * clock[0])
    return parent


def log_classes(client: mlflow.MlflowClient, run: str, line: pd.Series) -> None:
    """per_class.csv and class_counts.json as a job logs them: the first mu x classes are the minority, with lower F1."""
    classes = CLASSES[line["dataset"]]
    minority = list(range(round(float(line["mu"]) * len(classes))))
    f1s = [float(line["f1"]) + i - 20 * (i in minority) for i in range(len(classes))]
    text = "".join(f"{name},0.5,0.5,{f1:.4f},100\n" for name, f1 in zip(classes, f1s, strict=True))
    client.log_text(run, "class,precision,recall,f1,support\n" + text, "per_class.csv")
    client.log_dict(run, {"classes": classes, "minority_classes": minority}, "class_counts.json")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """An SQLite store holding every sweep of SWEEPS: its URI, and each sweep's parent run id."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = mlflow.MlflowClient(uri)  # not mlflow.set_tracking_uri: that would outlive this module's tests
    experiment_id = client.create_experiment("aos_bench", artifact_location=(folder / "artifacts").as_uri())
    clock = [0]
    return uri, {name: log_sweep(client, experiment_id, name, clock) for name in SWEEPS}


@pytest.mark.parametrize("name", REPORTS)
def test_report_files_equal_the_golden_ones(name, store, tmp_path):
    uri, parents = store
    sweeps, row = REPORTS[name]
    paths = write_report(uri, "aos_bench", ",".join(parents[sweep] for sweep in sweeps), tmp_path, row)
    assert [path.name for path in paths] == [f"{name}.md", f"{name}.csv", f"{name}.png", f"{name}_runs.csv"]
    assert paths[2].read_bytes().startswith(b"\x89PNG") and paths[2].stat().st_size > 10_000  # a figure, not compared: fonts vary
    for path in (paths[0], paths[1], paths[3]):
        text = path.read_text()
        for sweep in sweeps:
            text = text.replace(parents[sweep], f"<{sweep}>")
        golden = GOLDEN / path.name
        if os.environ.get("AOS_WRITE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{path.name} differs from {golden.relative_to(ROOT)}"


def test_golden_pages_name_their_sweeps_and_show_what_the_runs_leave_out():
    pages = {name: (GOLDEN / f"{name}.md").read_text() for name in REPORTS}
    assert "sweep `<table2-mnist>`" in pages["table2"] and "sweep `<table2-cifar10>`" in pages["table2"]
    assert "not run" in pages["table1"] and "1 of 2 seeds" in pages["table1"]
    assert "| 39.28 ± 2.17 (8) † |" in pages["methods"] and "| 88.95 ± 2.92 (7) |" in pages["methods"]  # only the tuned cell
    assert "**† trained at its method's own learning rate** (Reweight 0.2 x the recipe's `train.lr`" in pages["methods"]
    assert "steps differ between the row's methods" in pages["smoke"] and "no paper values" in pages["smoke"]
    assert "## Noise floor" in pages["noise"] and "## The minority classes" in pages["methods"]
    assert "**not in the table: 1 job(s) of the sweep without a FINISHED run**" in pages["aos_sensitivity"]
    assert sorted(path.stem for path in GOLDEN.glob("*.md")) == sorted(REPORTS)  # a golden page per report, no stale one


def png_width(path) -> int:
    """The width in pixels a PNG file's header gives."""
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_figures_are_a_page_wide_and_mark_the_paper_and_the_tuned_cells_apart(store, tmp_path):
    uri, parents = store
    for name in ("table2", "table1", "methods"):
        sweeps, row = REPORTS[name]
        png = write_report(uri, "aos_bench", ",".join(parents[sweep] for sweep in sweeps), tmp_path / name, row)[2]
        assert png_width(png) == figures.PAGE_WIDTH * figures.DPI == 1200, name  # methods was 3000 pixels wide
    mlflow.set_tracking_uri(uri)
    runs = sweep_runs(mlflow.get_experiment_by_name("aos_bench").experiment_id, parents["methods"])
    cells = studies.method_cells(runs)
    fig = studies.methods_figure(cells, runs, studies.method_order(runs["method"].unique()), studies.rows_in_order(cells), "t")
    daggers = [text for text in fig.axes[0].texts if text.get_text() == "†"]
    assert len(daggers) == (cells["lr_scale"] != 1).sum() == 1 and "† = trained at its method's own lr" in fig.axes[0].get_title()
    mnist = per_seed(sweep_runs(mlflow.get_experiment_by_name("aos_bench").experiment_id, parents["table2-mnist"]))
    classes = pd.DataFrame({"class": ["0", "1"], "f1": [90.0, 50.0], "method": ["aos", "aos"]})
    fig = figures.figure(paper.cells(mnist, "table2"), mnist, classes, ["1"], ("left", "right"))
    marks = [line for line in fig.axes[0].lines if line.get_label() == "paper"]
    assert [(line.get_marker(), line.get_color(), line.get_linestyle()) for line in marks] == [("D", "red", "None")]  # not black ticks
