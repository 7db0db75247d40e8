"""Training throughput of M jobs trained as one stacked network (hydra/launcher=stacked) against one job at a time.

    python scripts/bench_stack.py                    # MNIST and CIFAR-10's and Intel's shapes, base/ros/aos, M = 1, 8, 32, 64
    python scripts/bench_stack.py --quick            # the same in under a minute on a 2-core CPU: M = 1, 2, 3 steps, one dataset
    python scripts/bench_stack.py --write            # also (re)writes its section of results/bench_<device>.md
    python scripts/bench_stack.py --json             # one JSON object: each M's images/s and speedup, aos_over_ros, projection

Each dataset trains recipe=paper's network and train settings (conf/recipe_dataset/paper_<dataset>.yaml) on a step
imbalanced subset (mu = 0.9, rho = 500), job m with seed m and data_seed m (its own subset, initialisation and batches):
- one job: aos_bench.train.fit on job 0, timed over --steps steps after a --warmup-step fit (bench.py's suite
  pipeline). M separate jobs take M times as long: their throughput is one job's;
- stacked: aos_bench.train_stacked.fit_stack on jobs 0..M-1 of one method, set up before the clock, timed over --steps steps
  after a --warmup-step stack; its images/s count every model's images.
MNIST is the real one (from --data-dir; skipped, saying why, when absent). CIFAR-10 and Intel are random uint8 pixels in
their shapes and class sizes: a step's time does not depend on the pixels, and their files do not fit on the GPU node.
The projection costs every job of the paper's Tables 1 and 2 on the measured datasets (the sweeps of experiment=table1
and table2, their planned steps counted from each job's recipe) at the largest M's ms/step / M per job step.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import torch
from bench import ROOT, machine, new_model, shared_options, suite_seconds, sync, write_section  # scripts/bench.py, beside this file
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from aos_bench.data import ImageData, load_data
from aos_bench.errors import UsageError
from aos_bench.imbalance import make_subset
from aos_bench.methods import Method, get_method
from aos_bench.paths import CONFIG_DIR
from aos_bench.runtime import pick_device
from aos_bench.sweep import job_overrides
from aos_bench.train import TrainingSet, epoch_images, planned_steps, recipe_of, training_set
from aos_bench.train_stacked import fit_stack

RANDOM_PIXELS = {  # datasets stood in for by random uint8 pixels: (channels, training images per class)
    "cifar10": (3, [5000] * 10),  # CIFAR-10's training split
    "intel": (3, [2191, 2271, 2404, 2512, 2274, 2382]),  # Intel's seg_train (Kaggle), classes in sorted order
}
IMBALANCE = ["imbalance=step", "imbalance.mu=0.9", "imbalance.rho=500"]  # Table 2's row with the most minority images a batch
TABLES = ("table1", "table2")  # the paper's tables (experiment presets) the projection costs
SPEEDUP_GOAL = (32, 10.0)  # CUDA: on MNIST, at M >= 32, stacked images/s >= 10 x one job's
AOS_GOAL = 1.3  # CUDA: AOS time per image <= 1.3 x ROS's, stacked, at every M


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist,cifar10,intel", help="comma-separated: mnist, cifar10, intel")
    shared_options(parser, steps=50, warmup=5)
    parser.add_argument("--models", default="1,8,32,64", help="comma-separated stack sizes M")
    parser.add_argument("--quick", action="store_true", help="M = 1, 2; 3 timed steps after 1; MNIST, else CIFAR-10's random pixels")
    parser.add_argument("--write", action="store_true", help="write its section of results/bench_<device>.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.models, args.steps, args.warmup = "mnist", "1,2", 3, 1
    return args


def config(args: argparse.Namespace, dataset: str, method: str) -> DictConfig:
    """recipe=paper's config of this dataset and method with the benchmark's imbalance, device and precision."""
    overrides = [f"dataset={dataset}", f"method={method}", "recipe=paper", f"data_dir={args.data_dir}", "dataset.download=false"]
    overrides += [*IMBALANCE, f"train.device={args.device}", f"train.precision={args.precision}", "train.progress=false"]
    return compose("config", overrides=overrides)


def load(cfg: DictConfig) -> ImageData:
    """The dataset's training split: MNIST's files, or random pixels in CIFAR-10's or Intel's shape and class sizes."""
    if cfg.dataset.name not in RANDOM_PIXELS:
        return load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    channels, sizes = RANDOM_PIXELS[cfg.dataset.name]
    y = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    side = cfg.dataset.image_size  # the recipe's (Intel: 32 px)
    x = torch.randint(256, (len(y), channels, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageData(x, y, x[:0], y[:0], [f"c{i}" for i in range(len(sizes))])


def training_data(args: argparse.Namespace) -> tuple[dict[str, ImageData], dict[str, str]]:
    """Each requested dataset's training split, and why each absent one is skipped; --quick: MNIST, else CIFAR-10's."""
    found, skipped = {}, {}
    for name in args.dataset.split(","):
        try:
            found[name] = load(config(args, name, "base"))
        except UsageError as error:
            skipped[name] = str(error)
            print(f"{name}: skipped: {error}", file=sys.stderr)
    if args.quick and not found:
        found["cifar10"] = load(config(args, "cifar10", "base"))
    return found, skipped


def stack_inputs(cfg: DictConfig, data: ImageData, device: torch.device, method: Method, models: int) -> tuple[list[nn.Module], list[TrainingSet]]:
    """Jobs 0..models-1 of cfg's method, job m with seed m and data_seed m: its initialised model and its training set."""
    nets, sets = [], []
    for m in range(models):
        subset = make_subset(data.train_y, data.classes, cfg.imbalance, m)
        x, y = data.train_x[subset.indices].to(device), data.train_y[subset.indices].to(device)
        nets.append(new_model(OmegaConf.merge(cfg, {"seed": m}), data, device))
        sets.append(training_set(x, y, method, cfg.method, subset.minority_classes, m, cfg.train.epoch_size))
    return nets, sets


def stack_seconds(cfg: DictConfig, data: ImageData, device: torch.device, models: int, args: argparse.Namespace) -> float:
    """Seconds per step of fit_stack on `models` jobs of cfg's method, over --steps steps after --warmup untimed ones."""
    method = get_method(cfg.method.name)
    nets, sets = stack_inputs(cfg, data, device, method, models)

    def run(steps: int) -> float:
        sync(device)
        start = time.perf_counter()
        fit_stack(nets, sets, replace(recipe_of(cfg), max_steps=steps))
        sync(device)
        return time.perf_counter() - start

    run(args.warmup)
    return run(args.steps) / args.steps


def figures(seconds: float, models: int, batch_size: int) -> dict[str, float]:
    """Images per second (every model's) and milliseconds of one step of `models` models."""
    return {"images_per_s": models * batch_size / seconds, "ms_per_step": 1000 * seconds}


def bench_dataset(args: argparse.Namespace, name: str, data: ImageData, device: torch.device) -> dict:
    """One job's and each M's stacked throughput of every method on one dataset, and AOS over ROS time per image."""
    one_job, stacked = {}, {}
    for method in args.methods.split(","):
        cfg = config(args, name, method)
        batch = cfg.train.batch_size
        subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
        x, y = data.train_x[subset.indices].to(device), data.train_y[subset.indices].to(device)
        one_job[method] = figures(suite_seconds(cfg, data, x, y, subset.minority_classes, device, args)[0], 1, batch)
        stacked[method] = {}
        for models in map(int, args.models.split(",")):
            stacked[method][str(models)] = figures(stack_seconds(cfg, data, device, models, args), models, batch)
            stacked[method][str(models)]["speedup"] = stacked[method][str(models)]["images_per_s"] / one_job[method]["images_per_s"]
    aos_over_ros = {}
    if {"aos", "ros"} <= stacked.keys():
        aos_over_ros = {m: stacked["ros"][m]["images_per_s"] / stacked["aos"][m]["images_per_s"] for m in stacked["aos"]}
    return {
        "pixels": "random" if name in RANDOM_PIXELS else "real",
        "model": OmegaConf.to_container(cfg.model),
        "batch_size": batch,
        "one_job": one_job,
        "stacked": stacked,
        "aos_over_ros": aos_over_ros,
    }


def table_cells(table: str, dataset: str) -> list[tuple[DictConfig, int]]:
    """Each cell of `python -m aos_bench -m experiment=<table> dataset=<dataset>`: the config of its first job, and its
    number of jobs (the sweep's jobs, grouped by all but their seed: a seed moves which images train, not how many)."""
    sweep = compose("config", overrides=[f"experiment={table}", f"dataset={dataset}"], return_hydra_config=True)
    cells: dict[tuple[str, ...], int] = {}
    for job in job_overrides(sweep):
        cell = tuple(o for o in job if not o.startswith("seed="))
        cells[cell] = cells.get(cell, 0) + 1
    return [(compose("config", overrides=list(cell)), jobs) for cell, jobs in cells.items()]


def job_steps(cfg: DictConfig, data: ImageData) -> int:
    """Optimizer steps one job of `cfg` plans: train.planned_steps of its method's epoch on its imbalanced subset."""
    subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
    y = data.train_y[subset.indices]
    positions = get_method(cfg.method.name).resample(y, torch.Generator().manual_seed(cfg.seed))
    return planned_steps(epoch_images(y, positions, cfg.train.epoch_size), recipe_of(cfg))[1]


def projection(results: dict, data: dict[str, ImageData], models: int) -> dict:
    """Per paper table: its jobs on the datasets measured with all its methods, their planned steps, and the time they
    take stacked `models` at a time (a job step costs ms/step / models) and one job at a time; its other datasets."""
    out = {}
    for table in TABLES:
        grid = compose("config", overrides=[f"experiment={table}"], return_hydra_config=True).hydra.sweeper.params
        out[table] = {"datasets": [], "missing": [], "models": models, "jobs": 0, "steps": 0, "stacked_s": 0.0, "one_job_s": 0.0}
        for name in str(grid.dataset).split(","):
            cells = table_cells(table, name) if name in results else []
            if not cells or any(cfg.method.name not in results[name]["stacked"] for cfg, _ in cells):
                out[table]["missing"].append(name)
                continue
            out[table]["datasets"].append(name)
            for cfg, jobs in cells:
                steps, method = jobs * job_steps(cfg, data[name]), cfg.method.name
                out[table]["jobs"] += jobs
                out[table]["steps"] += steps
                out[table]["stacked_s"] += steps * results[name]["stacked"][method][str(models)]["ms_per_step"] / models / 1000
                out[table]["one_job_s"] += steps * results[name]["one_job"][method]["ms_per_step"] / 1000
    return out


def goal_lines(summary: dict) -> list[str]:
    """The goals, each marked met or not met by this run's figures (CUDA only)."""
    models, speedup = SPEEDUP_GOAL
    lines = []
    mnist = summary["datasets"].get("mnist")
    for method, by_m in (mnist["stacked"] if mnist else {}).items():
        values = [f"{v['speedup']:.1f}x at M={m} {'met' if v['speedup'] >= speedup else 'NOT met'}" for m, v in by_m.items() if int(m) >= models]
        if values:
            lines.append(f"goal, stacked >= {speedup:g}x one job at M >= {models} on mnist ({method}): {', '.join(values)}")
    for name, result in summary["datasets"].items():
        values = [f"{r:.2f} at M={m} {'met' if r <= AOS_GOAL else 'NOT met'}" for m, r in result["aos_over_ros"].items()]
        if values:
            lines.append(f"goal, aos/ros time per image <= {AOS_GOAL} on {name}: {', '.join(values)}")
    return lines


def projection_lines(summary: dict) -> list[str]:
    """The paper tables' projected training time, one line each."""
    lines = []
    for table, p in summary["projection"].items():
        if not p["datasets"]:
            lines.append(f"projection, {table}: not made ({', '.join(p['missing'])} not measured)")
            continue
        missing = f"; without {', '.join(p['missing'])} (not measured)" if p["missing"] else ""
        lines.append(
            f"projection, {table} on {', '.join(p['datasets'])}: {p['jobs']} jobs, {p['steps']:,} planned steps: "
            f"{p['stacked_s'] / 60:.1f} min of {summary['device']} time stacked {p['models']} at a time, "
            f"{p['one_job_s'] / 60:.1f} min one job at a time{missing}"
        )
    return lines


def markdown(summary: dict) -> str:
    """The section of results/bench_<device>.md: the throughput table, AOS over ROS, the goals and the projection."""
    rows = []
    for name, result in summary["datasets"].items():
        label = f"{name} ({result['pixels']} pixels)"
        for method, one in result["one_job"].items():
            rows.append(f"| {label} | {method} | one job (fit) | {one['images_per_s']:,.0f} | 1.00 | {one['ms_per_step']:.1f} |")
            rows += [f"| {label} | {method} | {m} | {v['images_per_s']:,.0f} | {v['speedup']:.2f} | {v['ms_per_step']:.1f} |"
                     for m, v in result["stacked"][method].items()]
    ratios = [f"{name} " + ", ".join(f"{r:.2f} (M={m})" for m, r in result["aos_over_ros"].items())
              for name, result in summary["datasets"].items() if result["aos_over_ros"]]
    networks = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in r["model"].items()) for name, r in summary["datasets"].items())
    return "\n".join([
        f"## Stacked training (hydra/launcher=stacked) on {summary['device']}: M jobs as one network against one job",
        "",
        f"`{summary['command']}`",
        "",
        f"{summary['processor']}; torch {summary['torch']}, {summary['threads']} torch threads; 1-minute load average "
        f"{summary['load_1min']:.2f} before, {summary['load_1min_after']:.2f} after. recipe=paper, train.precision="
        f"{summary['precision']}; step imbalance mu = 0.9, rho = 500, job m with seed m and data_seed m; {summary['steps']} "
        f"timed steps after {summary['warmup']} warm-up steps. Networks: {networks}.",
        "",
        "| dataset | method | M | images/s | speedup over one job | ms/step |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        *(f"- {name}: skipped: {reason}" for name, reason in summary["skipped"].items()),
        f"- aos/ros time per image, stacked: {'; '.join(ratios) if ratios else 'not measured'}",
        *(f"- {line}" for line in (goal_lines(summary) if summary["device"] == "cuda" else [])),
        *(f"- {line}" for line in projection_lines(summary)),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> dict:
    """Benchmark every requested dataset; print the table or one JSON object, and write the results file if asked."""
    args = parse_args(list(argv) if argv is not None else None)
    device = pick_device(args.device)
    setup = machine(device) | {"steps": args.steps, "warmup": args.warmup, "precision": args.precision}
    models = [int(m) for m in args.models.split(",")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        data, skipped = training_data(args)
        results = {name: bench_dataset(args, name, d, device) for name, d in data.items()}
        projected = projection(results, data, max(models))
    setup["load_1min_after"] = os.getloadavg()[0]
    command = ("python scripts/bench_stack.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    summary = {**setup, "command": command, "models": models, "skipped": skipped, "datasets": results, "projection": projected}
    text = markdown(summary)
    if args.write:
        write_section(ROOT / "results" / f"bench_{device.type}.md", f"stacked {args.dataset}, precision={args.precision}", text, "bench_stack.py")
    print(json.dumps(summary, indent=1) if args.json else text)
    return summary


if __name__ == "__main__":
    main()
