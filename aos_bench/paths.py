"""Where the configs are, and the paper's values kept beside them: the bottom floor, read by the entry point and the report."""

import re
from pathlib import Path

import yaml

from aos_bench.errors import UsageError

# conf/ at the top of a checkout, or aos_bench/conf inside an installed package
CONFIG_DIR = next(p for p in (Path(__file__).parent / "conf", Path(__file__).parents[1] / "conf") if p.is_dir())
# The paper's published values: conf/paper.yaml (data beside the configs, not code)
PAPER = yaml.safe_load((CONFIG_DIR / "paper.yaml").read_text())
# Published top-1 figures of the long-tailed benchmark (experiment=cifar10_lt), each with its source
PUBLISHED = yaml.safe_load((CONFIG_DIR / "published.yaml").read_text())

# A name that is a file of its own inside a folder: no separator, no `..`, no leading dot, not absolute
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
REPORT_SUFFIXES = (".md", ".csv", ".png", "_runs.csv")  # the files of one report, <name><suffix>


def is_plain_name(name: str) -> bool:
    """Whether `name` names a file directly inside a folder (letters, digits, _ . -, not starting with a dot)."""
    return PLAIN_NAME.fullmatch(name) is not None


def report_files(out: Path, name: str) -> list[Path]:
    """<out>/<name>.md, .csv, .png and _runs.csv, once each is sure to be a plain file inside `out`; else UsageError."""
    if not is_plain_name(name):
        raise UsageError(f"report name {name!r}: a plain name (letters, digits, _ . -, not starting with a dot), so that it stays inside {out}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder; give a folder (it is created if missing)")
    paths = [out / f"{name}{suffix}" for suffix in REPORT_SUFFIXES]
    for path in paths:
        if path.is_symlink():  # writing would follow it, wherever it points
            raise UsageError(f"{path} is a symbolic link (to {path.readlink()}): the report writes plain files inside {out} only; remove the link")
        if path.exists() and not path.is_file():
            raise UsageError(f"{path} exists and is not a file: the report would overwrite it; move it away")
    return paths
