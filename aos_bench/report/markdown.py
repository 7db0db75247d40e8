"""How a report page writes things: the paper's names, numbers as cells, markdown tables, and where the runs come from."""

from collections.abc import Sequence

import mlflow
import pandas as pd

from aos_bench.registry import display
from aos_bench.report.runs import ENV, unfinished

JOB_SETTINGS = ["dataset.name", "imbalance.kind", "imbalance.mu", "method.name", "method.eps", "method.p", "seed"]


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
    return f"{display(dataset)}{settings_text(mu, rho)}"


def settings_text(mu: float, rho: float) -> str:
    """' mu=0.3 rho=500', without the settings a row has not (exp has no mu, none has neither)."""
    return "".join(f" {name}={value:g}" for name, value in (("mu", mu), ("rho", rho)) if pd.notna(value))


def environment(runs: pd.DataFrame) -> str:
    """What the runs ran on, from their env.* params: each value once, several when the runs differ."""
    values = {key: ", ".join(sorted(set(map(str, runs[key])))) for key in ("recipe", *ENV)}
    stacks = sorted(set(runs["stacked"]))
    stacked = f"; models per stack (hydra/launcher=stacked): {', '.join(map(str, stacks))}" if max(stacks) > 1 else ""
    return (
        f"recipe `{values['recipe']}`; torch {values['torch']} on {values['device']}, {values['threads']} torch "
        f"thread(s) per job, precision {values['precision']}, deterministic algorithms {values['deterministic']}{stacked}"
    )


def carried(parent: mlflow.entities.Run) -> str:
    """', carried from sweep `<id>` of another store' for a sweep imported by aos_bench.carry, else ''."""
    source = parent.data.tags.get("carried_from")
    return f", carried from sweep `{source}` of another store" if source else ""


def provenance(parents: Sequence[mlflow.entities.Run]) -> str:
    """Markdown lines naming each sweep the table comes from: its parent run id, status and launching command."""
    return "\n".join(
        f"- sweep `{parent.info.run_id}` ({parent.info.status}{carried(parent)}), last launched as "
        f"`python -m aos_bench -m {parent.data.tags.get('sweep_command')}` into `{parent.data.tags.get('sweep_dir')}`;"
        for parent in parents
    )


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


def trimmed_note(runs: pd.DataFrame) -> str:
    """The mark of a table with trimmed runs (runs.sweep_runs: stopped at train.max_steps), as one sentence for the
    page, the figure and the console; '' when no run was trimmed."""
    if not (steps := trimmed_steps(runs)):
        return ""
    return (
        f"TRIMMED: {runs['trimmed'].sum()} of {len(runs)} runs stopped at train.max_steps ({steps} optimizer steps) before their "
        "recipe's epochs ran: these numbers measure a few steps, not the methods; no rank, ordering or p-value is given"
    )


def trimmed_steps(runs: pd.DataFrame) -> str:
    """The optimizer steps of the trimmed runs, e.g. '6' or '2/6'; '' when no run was trimmed."""
    return "/".join(str(int(value)) for value in sorted(runs.loc[runs["trimmed"], "steps"].unique()))
