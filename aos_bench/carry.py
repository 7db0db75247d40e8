"""Carry a sweep from one MLflow store to another: its parent run and FINISHED job runs as one JSON Lines file.

    python -m aos_bench.carry export --tracking-uri URI --sweep RUN_ID results/sweeps/methods.jsonl
    python -m aos_bench.carry import --tracking-uri URI results/sweeps/methods.jsonl

For a sweep that outlives its store (a laptop's SQLite file, a lent machine handed back, a long sweep run over several
sittings): export what has FINISHED, import it into another store, and the sweep's own command resumes it there,
training only the jobs without a FINISHED run (aos_bench.sweep); the report reads imported runs as any others.

Each line is one run: its name, times, status, tags, params, every metric's history, and its text artifacts
(config.yaml, class_counts.json, per_class.csv: all that the report reads). The first line is the parent run.
Trade-offs: the figures (PNG) stay behind, since they would make the file about ten times larger and the report
draws its own from the numbers; run ids are the target store's own, so each imported run keeps its source id in the
tag `carried_from`, and its job runs are nested under the imported parent (`mlflow.parentRunId`, `sweep`).
An import merges: into the target's latest parent of the same command (tag `sweep_key`) when there is one, adding
only the jobs (tag `config_hash`) it has no FINISHED run of, so importing a longer export of one sweep adds its new runs.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param

from aos_bench.store import tracking_uri
from aos_bench.sweep import last_parent
from aos_bench.tracking import ensure_experiment, require_server

TEXT_ARTIFACTS = (".yaml", ".json", ".csv", ".md", ".txt")  # carried as text; anything else (figures) stays behind
NESTING = ("mlflow.parentRunId", "sweep")  # the tags that hold the parent's run id, rewritten on import
BATCH = 100  # params or tags per log_batch call (MLflow's limit); metrics go 1000 at a time


def run_record(client: mlflow.MlflowClient, run: mlflow.entities.Run) -> dict:
    """One run as plain data: name, times, status, tags, params, metric histories and text artifacts."""
    run_id = run.info.run_id
    texts = {}
    for item in client.list_artifacts(run_id):
        if not item.is_dir and item.path.endswith(TEXT_ARTIFACTS):
            texts[item.path] = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{item.path}")
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "tags": run.data.tags,
        "params": run.data.params,
        "metrics": {key: [[m.step, m.timestamp, m.value] for m in client.get_metric_history(run_id, key)] for key in run.data.metrics},
        "artifacts": texts,
    }


def export_sweep(uri: str, sweep: str, path: Path) -> int:
    """Write the sweep's parent run and its FINISHED job runs (oldest first) to path; returns the number of job runs.
    LookupError when `sweep` is not a sweep's parent run."""
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(sweep)
    if "sweep_key" not in parent.data.tags:
        raise LookupError(f"--sweep={sweep} is a job run, not a sweep's parent run (a parent has the tag sweep_key)")
    experiment = client.get_experiment(parent.info.experiment_id)
    jobs = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{sweep}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"], max_results=50000,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        out.write(json.dumps({**run_record(client, parent), "experiment": experiment.name}, sort_keys=True) + "\n")
        for job in jobs:
            out.write(json.dumps(run_record(client, job), sort_keys=True) + "\n")
    return len(jobs)


def create_run(client: mlflow.MlflowClient, experiment_id: str, record: dict, tags: dict[str, str]) -> str:
    """A new run in the target store holding the record's params, metrics and text artifacts under `tags`, ended as
    the record ended; returns its id."""
    run_id = client.create_run(experiment_id, start_time=record["start_time"], tags=tags, run_name=record["name"]).info.run_id
    params = [Param(key, value) for key, value in record["params"].items()]
    for start in range(0, len(params), BATCH):
        client.log_batch(run_id, params=params[start : start + BATCH])
    metrics = [Metric(key, value, timestamp, step) for key, history in record["metrics"].items() for step, timestamp, value in history]
    for start in range(0, len(metrics), 10 * BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + 10 * BATCH])
    for name, text in record["artifacts"].items():
        client.log_text(run_id, text, name)
    status = "KILLED" if record["status"] == "RUNNING" else record["status"]  # nothing runs it in the target store
    client.set_terminated(run_id, status, end_time=record["end_time"])
    return run_id


def import_sweep(uri: str, path: Path) -> tuple[str, int, int]:
    """Merge the exported sweep at path into the store at uri; returns (the parent's id there, job runs added, job runs
    skipped because that store already has a FINISHED run of their job in that sweep)."""
    lines = path.read_text().splitlines()
    parent, jobs = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    experiment_id = ensure_experiment(uri, parent["experiment"])  # first: a client opens the store, which the lock covers
    client = mlflow.MlflowClient(uri)
    same = last_parent(client, experiment_id, parent["tags"]["sweep_key"])
    tags = parent["tags"] | {"carried_from": parent["run_id"]}
    parent_id = same[0].info.run_id if same else create_run(client, experiment_id, parent, tags)
    done = {
        run.data.tags.get("config_hash")
        for run in client.search_runs([experiment_id], f"tags.sweep = '{parent_id}' and attributes.status = 'FINISHED'", max_results=50000)
    }
    added = 0
    for job in jobs:
        if job["tags"].get("config_hash") in done:
            continue
        create_run(client, experiment_id, job, job["tags"] | dict.fromkeys(NESTING, parent_id) | {"carried_from": job["run_id"]})
        added += 1
    return parent_id, added, len(jobs) - added


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: export a sweep to a file, or import one into a store."""
    parser = argparse.ArgumentParser(prog="python -m aos_bench.carry", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["export", "import"])
    parser.add_argument("file", type=Path, help="the sweep's JSON Lines file, written by export, read by import")
    parser.add_argument("--tracking-uri", default=tracking_uri({}), help="MLflow store (default: %(default)s)")
    parser.add_argument("--sweep", help="export: the sweep's parent run id")
    args = parser.parse_args(argv)
    require_server(args.tracking_uri, "--tracking-uri")
    if args.action == "export":
        if not args.sweep:
            raise SystemExit("aos_bench.carry: export needs --sweep, the sweep's parent run id")
        try:
            count = export_sweep(args.tracking_uri, args.sweep, args.file)
        except mlflow.exceptions.MlflowException:
            raise SystemExit(f"aos_bench.carry: --sweep={args.sweep}: no such run at {args.tracking_uri}") from None
        except LookupError as error:
            raise SystemExit(f"aos_bench.carry: {error}") from None
        print(f"{args.file}: the sweep {args.sweep} and {count} FINISHED job runs")
        return
    if not args.file.is_file():
        raise SystemExit(f"aos_bench.carry: {args.file}: no such file (write one with `python -m aos_bench.carry export`)")
    parent_id, added, skipped = import_sweep(args.tracking_uri, args.file)
    print(f"sweep {parent_id} at {args.tracking_uri}: {added} job runs added, {skipped} already there")


if __name__ == "__main__":
    main()
