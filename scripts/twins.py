"""Each run of one sweep against its twin in another: the FINISHED run with the same job config.

    python scripts/twins.py --tracking-uri sqlite:///mlruns/mlflow.db <sweep id> <other sweep id>

Twins have equal params apart from the preset, the store and the env.* ones (what a job ran on, stacking included):
the same data, subset, initialisation, batches and draws. Two uses:
- a stacked sweep against separate jobs: their F1 differs by float order only, and the RMS of the pair's std
  (|difference| / sqrt 2) is the number to set beside the within-seed spread of results/noise.md;
- one study's cells against a table's (the methods study's BASE, ROS and AOS against Table 2's): the same job on the
  same machine and thread count gives the same F1, so the largest |difference| should be 0.
Prints one line per twin pair, then per method the RMS of first - second F1, the RMS of the pair's std and the
largest |difference|.
"""

import argparse
import math

import mlflow

NOT_THE_JOB = ("preset", "tracking.uri", "env.")  # params that do not change what a job computes, up to float order


def job_key(run: mlflow.entities.Run) -> tuple:
    """A run's params without NOT_THE_JOB ones, as a hashable key."""
    return tuple(sorted((k, v) for k, v in run.data.params.items() if not k.startswith(NOT_THE_JOB)))


def finished(client: mlflow.MlflowClient, sweep: str) -> list[mlflow.entities.Run]:
    """The FINISHED job runs of a sweep (its parent run id)."""
    experiment = client.get_run(sweep).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{sweep}' and attributes.status = 'FINISHED'", max_results=5000)


def stacked(run: mlflow.entities.Run) -> str:
    """' (stacked, M models)' for a run trained in a stack, else ''."""
    models = run.data.params.get("env.stacked_models")
    return f" (stacked, {models} models)" if models else ""


def main() -> None:
    """Pair the runs, print each pair and the per-method summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="the store holding both sweeps")
    parser.add_argument("first", help="parent run id of the sweep whose runs are paired")
    parser.add_argument("second", help="parent run id of the sweep searched for their twins")
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)
    others = {job_key(run): run for run in finished(client, args.second)}
    differences: dict[str, list[float]] = {}
    for run in sorted(finished(client, args.first), key=lambda r: r.info.run_name):
        twin = others.get(job_key(run))
        if twin is None:
            print(f"{run.info.run_name}: no twin in sweep {args.second}")
            continue
        f1, other = run.data.metrics["test_f1_macro"], twin.data.metrics["test_f1_macro"]
        differences.setdefault(run.data.params["method.name"], []).append(f1 - other)
        print(f"{run.info.run_name}: {f1:.2f}{stacked(run)} against {other:.2f}{stacked(twin)}, {f1 - other:+.2f}")
    for method, values in differences.items():
        rms = math.sqrt(sum(d * d for d in values) / len(values))
        largest = max(abs(d) for d in values)
        print(f"{method}: {len(values)} pairs, RMS of first - second {rms:.2f}, RMS of the pair's std {rms / math.sqrt(2):.2f},"
              f" largest |difference| {largest:.6f}")


if __name__ == "__main__":
    main()
