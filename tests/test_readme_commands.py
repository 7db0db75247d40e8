"""The commands README.md and results/README.md give for a committed table resolve to the settings its runs recorded
(`results/<table>_runs.csv`): the torch thread count and the recipe, so that running one reproduces the table."""

import re
import shlex

import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aos_bench.checks import override_key

COMMAND = re.compile(r"python -m aos_bench -m ([^`#\n]+)")  # a sweep command, up to a closing backtick or a comment
RECORDED = {"threads": "train.threads", "recipe": "recipe.name"}  # a _runs.csv column: the config key it records


def readme_tables() -> list[tuple[str, str]]:
    """(table, command) for each sweep command of README.md's `Running one table` and each table row of results/README.md."""
    block = (ROOT / "README.md").read_text().split("## Running one table", 1)[1].split("```", 2)[1]
    found = [(re.search(r"experiment=(\w+)", line)[1], COMMAND.search(line)[1]) for line in block.splitlines() if COMMAND.search(line)]
    for line in (ROOT / "results" / "README.md").read_text().splitlines():
        row = re.match(r"\| `(\w+)\.md`, `\.csv`, `_runs\.csv`", line)
        if row and COMMAND.search(line):
            found.append((row[1], COMMAND.search(line)[1]))
    return found


def resolved(overrides: list[str], key: str) -> set[str]:
    """The values `key` takes over the jobs of `python -m aos_bench -m overrides`: a list the command or the preset's
    grid sweeps, else the one value the composed config gives."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        single = [o for o in overrides if "," not in o.partition("=")[2]]
        config = compose("config", overrides=single, return_hydra_config=True)
    swept = {override_key(o): o.partition("=")[2] for o in overrides if "," in o.partition("=")[2]}
    swept = {**{k: str(v) for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()}, **swept}
    group = key.split(".")[0] if key.endswith(".name") else key  # recipe.name is set by the option recipe=<name>
    if group in swept:
        return {value.strip() for value in swept[group].split(",")}
    return {str(OmegaConf.select(config, key))}


TABLES = readme_tables()


def test_every_committed_sweep_table_has_a_command_checked_here():
    names = {table for table, _ in TABLES}
    assert {"table1", "table2"} <= names and len([t for t, _ in TABLES if t in ("table1", "table2")]) >= 4  # both READMEs
    assert names >= {path.name.removesuffix("_runs.csv") for path in (ROOT / "results").glob("*_runs.csv")}


@pytest.mark.parametrize(("table", "command"), TABLES, ids=[f"{t}: {c.strip()}" for t, c in TABLES])
def test_a_readme_table_command_resolves_to_the_threads_and_recipe_its_runs_recorded(table, command):
    overrides = [word for word in shlex.split(command) if "=" in word and not word.startswith("hydra")]
    runs = pd.read_csv(ROOT / "results" / f"{table}_runs.csv", dtype=str)
    datasets = [o.partition("=")[2] for o in overrides if o.startswith("dataset=")]
    runs = runs[runs["dataset"].isin(datasets[-1].split(","))] if datasets else runs  # the rows this command ran
    assert not runs.empty
    for column, key in RECORDED.items():
        assert resolved(overrides, key) == set(runs[column]), f"{table}: `{command.strip()}` gives {key} other than its runs'"
