"""One sweep's MLflow runs -> the paper's table: F1 mean and spread over seeds, paired tests, the paper's values, a plot.

    python -m aos_bench.report [--tracking-uri URI] [--experiment NAME] [--sweep RUN_ID|latest] [--out results/]

writes <out>/<preset>.md, .csv, .png and _runs.csv for the sweep (an MLflow parent run made by aos_bench.sweep):
the paper's table layout, or for the presets methods, compare and aos_sensitivity the layout of aos_bench.report.studies,
for cifar10_lt that of aos_bench.report.lt.

The top floor: it picks the layout. Below it, each module imports only from the ones under it: lt, paper and studies
(the layouts), pages (the header and files every page shares), figures, markdown, stats, runs (reading MLflow), and
aos_bench.paths at the bottom.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: once here, before any floor below imports pyplot
import mlflow
import pandas as pd

from aos_bench.errors import UsageError, reject
from aos_bench.paths import report_files
from aos_bench.report.lt import write_lt
from aos_bench.report.markdown import trimmed_note
from aos_bench.report.paper import write_paper
from aos_bench.report.runs import find_sweep, one_recipe, sweep_runs
from aos_bench.report.studies import write_methods, write_sensitivity
from aos_bench.store import tracking_uri
from aos_bench.tracking import require_server

LAYOUTS: dict[str, Callable[..., list[Path]]] = {  # the studies beyond the paper's tables; any other preset: write_paper
    "methods": write_methods,
    "compare": write_methods,  # every method on one dataset of the user's choice (experiment=compare)
    "aos_sensitivity": write_sensitivity,
    "cifar10_lt": write_lt,  # CIFAR-10-LT: top-1 beside the published figures (experiment=cifar10_lt)
}


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
    report_files(out, name)  # a name or --out that would write outside `out` stops here, before any file is written
    runs = one_recipe(pd.concat([sweep_runs(found.experiment_id, p.info.run_id) for p in parents], ignore_index=True), sweep)
    if note := trimmed_note(runs):  # in the console too, not only on the page and the figure
        print(f"aos_bench: report: {name}: {note}", file=sys.stderr)
    if preset in LAYOUTS:  # the studies beyond the paper's tables have layouts of their own
        return LAYOUTS[preset](name, parents, runs, sweep, out)
    return write_paper(name, parents, runs, sweep, out, preset, row)


def sweep_arguments(parser: argparse.ArgumentParser, sweep_help: str = "the sweep's parent run id, or latest (default)") -> argparse.ArgumentParser:
    """Add the options that find one sweep, as the report and `python -m aos_bench.status` take them: --tracking-uri,
    --experiment, --sweep; returns the parser."""
    parser.add_argument("--tracking-uri", default=tracking_uri({}), help="MLflow store (default: %(default)s)")
    parser.add_argument("--experiment", default="aos_bench", help="MLflow experiment (default: %(default)s)")
    parser.add_argument("--sweep", default="latest", help=sweep_help)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write one sweep's report."""
    parser = argparse.ArgumentParser(prog="python -m aos_bench.report", description=__doc__.split("\n")[0])
    sweep_arguments(parser, "the sweep's parent run id, several joined by commas, or latest (default)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the files (default: %(default)s)")
    parser.add_argument("--row", help="DATASET,MU of the per-class plot, e.g. mnist,0.9 (default: the largest mu)")
    args = parser.parse_args(argv)
    require_server(args.tracking_uri, "--tracking-uri")
    try:
        paths = write_report(args.tracking_uri, args.experiment, args.sweep, args.out, args.row)
    except (LookupError, ValueError, UsageError) as error:  # a sweep not found, not one table, a name or --out refused
        reject(f"report: {error}")
    print("\n".join(map(str, paths)))
