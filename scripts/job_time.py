"""Wall time of whole jobs, start-up included: `python -m aos_bench` run end to end, per dataset, against the budget.

    python scripts/job_time.py                                   # recipe=paper: MNIST, CIFAR-10, Intel, 3 jobs each
    python scripts/job_time.py --datasets mnist --repeats 5 --threads 1
    python scripts/job_time.py --datasets mnist --against modern # also time recipe=modern in the same run: the speed-up
    python scripts/job_time.py --datasets cifar10 --against "paper dataset.augment.flip=false dataset.augment.crop_pad=0"

Each job is the costliest cell of its dataset's table (AOS, the table's largest mu: the most attacked images) and
logs into a throwaway MLflow store. Prints, per dataset, the median wall time and its ratio to the budget (and to
the --against recipe), then what the 150 jobs of Tables 1 and 2 at 5 seeds take one after another at these medians.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = {"mnist": 40, "cifar10": 60, "intel": 60}  # goal: median seconds of one job on a 2-core CPU
COSTLIEST = {  # the cell of the paper's tables with the most attacked images, per dataset
    "mnist": ["experiment=table2", "imbalance.mu=0.9"],
    "cifar10": ["experiment=table2", "imbalance.mu=0.9"],
    "intel": ["experiment=table1", "imbalance.mu=0.8"],
}
TABLE_JOBS = {"mnist": 30, "cifar10": 75, "intel": 45}  # jobs of Tables 1 and 2 at 5 seeds x 3 methods


def job_seconds(dataset: str, setting: str, threads: int | None, store: Path) -> float:
    """Wall time of one job, from process start to exit; `setting` = a recipe name, then any overrides, space-separated."""
    recipe, *overrides = setting.split()
    command = [sys.executable, "-m", "aos_bench", *COSTLIEST[dataset], f"dataset={dataset}", "method=aos", f"recipe={recipe}", *overrides]
    command += [f"tracking.uri=sqlite:///{store}/mlflow.db", "train.progress=false", f"hydra.run.dir={store}/outputs"]
    command += [f"train.threads={threads}"] if threads else []
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    return time.perf_counter() - start


def main() -> None:
    """Time the jobs and print one line per dataset and recipe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist,cifar10,intel", help="comma-separated")
    parser.add_argument("--recipe", default="paper", help="the recipe timed against the budget (and any overrides, in quotes)")
    parser.add_argument("--against", default=None, help="another recipe timed in the same run, e.g. modern, or a recipe and overrides in quotes")
    parser.add_argument("--repeats", type=int, default=3, help="jobs per dataset and recipe; the figure is their median")
    parser.add_argument("--threads", type=int, default=None, help="train.threads; default: torch's choice")
    args = parser.parse_args()
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets.split(","):
            settings = list(filter(None, (args.recipe, args.against)))
            times = {setting: [] for setting in settings}
            for _ in range(args.repeats):  # the settings alternate, so a drift in the machine's load hits both alike
                for setting in settings:
                    times[setting].append(job_seconds(dataset, setting, args.threads, Path(tmp)))
            medians = {setting: statistics.median(ts) for setting, ts in times.items()}
            for setting, ts in times.items():
                times = ", ".join(f"{t:.1f}" for t in ts)
                print(f"{dataset} recipe={setting}: median {medians[setting]:.1f} s of {args.repeats} jobs ({times})", flush=True)
            ratio = medians[args.recipe] / BUDGET_S[dataset]
            print(f"{dataset}: median / budget ({BUDGET_S[dataset]} s) = {ratio:.2f} ({'met' if ratio <= 1 else 'NOT met'})")
            if args.against:
                print(f"{dataset}: {args.against} / {args.recipe} = {medians[args.against] / medians[args.recipe]:.2f}x")
            total += TABLE_JOBS[dataset] * medians[args.recipe]
    print(f"Tables 1 and 2 ({sum(TABLE_JOBS[d] for d in args.datasets.split(','))} jobs of these datasets) one after another: {total / 3600:.2f} h")


if __name__ == "__main__":
    main()
