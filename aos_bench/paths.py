"""Where the configs are, and the paper's values kept beside them: the bottom floor, read by the entry point and the report."""

from pathlib import Path

import yaml

# conf/ at the top of a checkout, or aos_bench/conf inside an installed package
CONFIG_DIR = next(p for p in (Path(__file__).parent / "conf", Path(__file__).parents[1] / "conf") if p.is_dir())
# The paper's published values: conf/paper.yaml (data beside the configs, not code)
PAPER = yaml.safe_load((CONFIG_DIR / "paper.yaml").read_text())
# Published top-1 figures of the long-tailed benchmark (experiment=cifar10_lt), each with its source
PUBLISHED = yaml.safe_load((CONFIG_DIR / "published.yaml").read_text())
