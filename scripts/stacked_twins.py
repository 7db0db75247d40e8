"""Each run of a stacked sweep against its separate twin: the run of another sweep with the same job config.

    python scripts/stacked_twins.py --tracking-uri sqlite:///mlruns/mlflow.db <stacked sweep id> <separate sweep id>

Twins have equal params apart from the preset, the store and the env.* ones (what a job ran on, stacking included):
the same data, subset, initialisation, batches and draws, trained alone or in a stack, so their F1 differs by float
order only. Prints one line per twin pair, then per method the RMS of stacked - separate F1 and the RMS of the pair's
std (|difference| / sqrt 2), the number to set beside the within-seed spread of results/noise.md.
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


def main() -> None:
    """Pair the runs, print each pair and the per-method summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="the store holding both sweeps")
    parser.add_argument("stacked", help="parent run id of the stacked sweep")
    parser.add_argument("separate", help="parent run id of the sweep whose runs trained alone")
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)
    alone = {job_key(run): run for run in finished(client, args.separate)}
    differences: dict[str, list[float]] = {}
    for run in sorted(finished(client, args.stacked), key=lambda r: r.info.run_name):
        twin = alone.get(job_key(run))
        if twin is None:
            print(f"{run.info.run_name}: no twin in sweep {args.separate}")
            continue
        f1, other = run.data.metrics["test_f1_macro"], twin.data.metrics["test_f1_macro"]
        differences.setdefault(run.data.params["method.name"], []).append(f1 - other)
        print(f"{run.info.run_name}: stacked ({run.data.params.get('env.stacked_models', '1')} models) {f1:.2f}, alone {other:.2f}, {f1 - other:+.2f}")
    for method, values in differences.items():
        rms = math.sqrt(sum(d * d for d in values) / len(values))
        print(f"{method}: {len(values)} pairs, RMS of stacked - alone {rms:.2f}, RMS of the pair's std {rms / math.sqrt(2):.2f}")


if __name__ == "__main__":
    main()
