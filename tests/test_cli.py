"""The command line: the `aos-bench` console script, its tab completion as bash runs it, and its --help page."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = Path(sys.executable).parent / "aos-bench"  # pip install -e . writes it beside the venv's python
# Hydra's bash completion script, loaded as `eval "$(aos-bench -sc install=bash)"` does, then asked for one line
COMPLETE = 'eval "$(aos-bench -sc install=bash)"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=1; hydra_bash_completion; printf "%s\\n" "${COMPREPLY[@]}"'


def aos_bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`aos-bench ARGS` (or bash with ARGS when env has COMP_LINE) with the venv's bin first on PATH, run in a bare folder."""
    assert SCRIPT.exists(), f"no console script at {SCRIPT}: pip install -e . writes it"
    env = {"PATH": f"{SCRIPT.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **env}
    command = ["bash", "-c", COMPLETE] if "COMP_LINE" in env else [str(SCRIPT), *args]
    return subprocess.run(command, cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=120)


def test_the_console_script_is_the_module_entry_with_its_one_line_errors():
    result = aos_bench("seed=abc")
    assert (result.returncode, result.stderr.strip()) == (2, "aos_bench: seed=abc: a whole number >= 0")


@pytest.mark.parametrize(
    ("line", "offered"),
    [
        ("aos-bench met", {"method=", "method."}),
        ("aos-bench method=a", {"method=aos"}),
        ("aos-bench dataset=", {"dataset=cifar10", "dataset=folder", "dataset=intel", "dataset=mnist", "dataset=synthetic"}),
        ("aos-bench hydra/launcher=st", {"hydra/launcher=stacked"}),
    ],
)
def test_tab_completion_in_bash_offers_groups_options_and_keys(line, offered):
    result = aos_bench(COMP_LINE=line)
    assert set(result.stdout.split()) == offered, result.stderr


def test_help_is_the_tools_page_with_its_groups_and_examples():
    result = aos_bench("method=ros", "--help")
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert "powered by hydra" not in page.lower()
    for example in (
        "aos-bench -m method=base,ros,aos",
        "aos-bench dataset=synthetic train=smoke",
        "aos-bench -m experiment=compare dataset=folder dataset.root=my_data",
    ):
        assert re.search(rf"^  {re.escape(example)}  +# \w", page, re.M), example
    groups = dict(re.findall(r"^  ([a-z_/]+) {2,}([a-z0-9_]+(?:, [a-z0-9_]+)*)$", page, re.M))
    assert set(groups) == {"dataset", "imbalance", "method", "recipe", "model", "train", "experiment", "tracking", "hydra/launcher"}
    assert groups["method"].split(", ") == sorted(path.stem for path in (ROOT / "conf" / "method").glob("*.yaml"))
    assert "stacked" in groups["hydra/launcher"].split(", ")
    assert not re.search(r"recipe_dataset|recipe_method|^ *row\b", page, re.M)  # groups the config fills in itself
    assert "method=ros" in page  # the choices of this command
