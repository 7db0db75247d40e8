"""A dataset pack: the images some sweep's jobs train and test on, lossless and small enough to carry to a GPU node.

    python -m aos_bench.pack OUT.npz [overrides ...]      # e.g. experiment=cifar10_lt imbalance.rho=10

A GPU node of this project takes at most 64 MiB a call, and CIFAR-10 is 198 MB of PNG files. A job reads only the
images of its imbalanced subset and the test split, so the pack holds those: every train label (the subset is drawn
from the labels alone, so the node draws the same subset) and the images of the subsets that the overrides' jobs
draw, plus the whole test split. Images are lossless WebP, a grid of GRID x GRID images a picture (1.6 to 1.8 KB an
image on CIFAR-10, where one PNG each takes 2.2). A loader given the pack (`<data_dir>/<dataset>_pack.npz`) returns
the full train split with the images it lacks left black, and marks which it holds: job.prepare refuses, in one line,
a job whose subset needs an image the pack lacks.
"""

import sys
from pathlib import Path

import torch

from aos_bench.errors import UsageError, reject
from aos_bench.packfile import write_pack


def compose_jobs(overrides: list[str]) -> list:
    """The configs of every job that `python -m aos_bench -m <overrides>` runs (the preset's grid and the overrides),
    each checked by checks.validate: the loaders and the imbalance trust their values."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from aos_bench.paths import CONFIG_DIR
    from aos_bench.sweep import check_values

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        single = [o for o in overrides if "," not in o.partition("=")[2]]  # a sweep's lists expand below
        config = compose("config", overrides=single, return_hydra_config=True)
        with open_dict(config):
            config.hydra.overrides.task = list(overrides)
        return [cfg for _, cfg in check_values(config)]


def pack_for(out: Path, overrides: list[str]) -> tuple[int, int]:
    """Write the pack of the dataset and subsets that a sweep's jobs (`overrides`, as on `python -m aos_bench -m`)
    draw; returns (train images packed, bytes written)."""
    from aos_bench.data import load_data
    from aos_bench.imbalance import make_subset

    jobs = compose_jobs(overrides)
    datasets = {(cfg.dataset.name, cfg.data_dir) for cfg in jobs}
    if len(datasets) != 1:
        raise UsageError(f"the overrides give jobs on {len(datasets)} datasets ({sorted(d for d, _ in datasets)}): a pack holds one")
    cfg = jobs[0]
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    drawn, parts = set(), []
    for c in jobs:
        key = (str(c.imbalance), c.data_seed)  # jobs that differ in method or training seed draw one subset
        if key not in drawn:
            drawn.add(key)
            parts.append(make_subset(data.train_y, data.classes, c.imbalance, c.data_seed, c.dataset).indices)
    rows = torch.cat(parts)
    write_pack(out, cfg.dataset, data.train_x, data.train_y, rows, data.test_x, data.test_y, data.classes)
    return len(torch.unique(rows)), out.stat().st_size


def main(argv: list[str] | None = None) -> None:
    """Command line: write the pack, print what it holds."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-") or "=" in args[0]:
        reject("usage: python -m aos_bench.pack OUT.npz [overrides ...], e.g. experiment=cifar10_lt")
    images, size = pack_for(Path(args[0]), args[1:])
    print(f"{args[0]}: {images} train images and the test split, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
