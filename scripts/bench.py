"""Training throughput of one recipe three ways: the model alone (limit), plain PyTorch (reference), and the suite.

    python scripts/bench.py                                  # MNIST, its default model, batch 128, base/ros/aos
    python scripts/bench.py --quick                          # the same in under a minute on a 2-core CPU
    python scripts/bench.py --dataset cifar10 --write        # also (re)writes its section of results/bench_<device>.md
    python scripts/bench.py --json                           # one JSON object: suite_over_reference, suite_over_limit, ...

Every pipeline trains the same architecture on the same imbalanced subset with the same optimiser and batch size:
- limit: one fixed batch, already on the device and normalised, in the suite's memory format and precision;
- limit_plain: the same in fp32 and PyTorch's default memory format (the cost of the reference's model alone);
- reference: what a user writes without the suite: the torchvision dataset object over the same files, a per-sample
  transform (ToTensor, the dataset's augmentation, Normalize), DataLoader(shuffle=True), fp32, default memory format;
  for AOS, FGSM on the whole batch, kept for the masked minority images;
- suite: aos_bench.train.fit itself, timed over --steps steps after a --warmup-step fit (its set-up included).
Start-up (imports, config, cached data, MLflow run) is timed on its own, once per dataset, and so is a command
rejected for a bad value (`python -m aos_bench train.lr=-1`: its one-line error and exit code 2).
"""

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from aos_bench.data import ImageData, _unnest, load_data
from aos_bench.imbalance import Subset as ImbalancedSubset
from aos_bench.imbalance import make_subset
from aos_bench.methods import get_method
from aos_bench.models import build_model
from aos_bench.paths import CONFIG_DIR
from aos_bench.runtime import pick_device
from aos_bench.tracking import job_run
from aos_bench.train import autocast, epoch_images, fit, make_optimizer, recipe_of, training_set

ROOT = Path(__file__).resolve().parents[1]
AOS_BUDGET = 0.75  # goal: AOS time per image <= (1 + AOS_BUDGET * attacked fraction) x ROS time per image
GOALS = {"suite_over_limit": 0.9, "suite_over_reference": 1.3}  # CPU goals, on base and ros


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", help="comma-separated: mnist, cifar10, intel")
    parser.add_argument("--recipe", default=None, help="recipe (conf/recipe/*.yaml): its model and augmentation; default: the suite's")
    parser.add_argument("--model", default=None, help="model config (conf/model/*.yaml); default: the recipe's")
    shared_options(parser, steps=100, warmup=20)
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's (one per core)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of the reference")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all pipelines; figures are their medians")
    parser.add_argument("--compile", action="store_true", help="also time the suite with train.compile=true")
    parser.add_argument("--quick", action="store_true", help="20 timed steps after 5 warm-up steps")
    parser.add_argument("--write", action="store_true", help="write the dataset's section of results/bench_<device>.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 20, 5
    return args


def shared_options(parser: argparse.ArgumentParser, steps: int, warmup: int) -> None:
    """The options bench.py and bench_stack.py share: methods, timed and warm-up steps, device, precision, JSON, data."""
    parser.add_argument("--methods", default="base,ros,aos", help="comma-separated suite methods")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps before them")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="auto", help="the suite's train.precision: auto | fp32 | bf16")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--data-dir", default=os.environ.get("AOS_DATA_DIR", str(ROOT.parent / "shared" / "data")))


def config(args: argparse.Namespace, dataset: str, method: str = "aos") -> DictConfig:
    """The project's real config for this dataset and method, with the benchmark's batch size and device."""
    overrides = [f"dataset={dataset}", f"method={method}", f"data_dir={args.data_dir}", f"train.batch_size={args.batch_size}"]
    overrides += [f"train.device={args.device}", f"train.precision={args.precision}", "train.progress=false"]
    overrides += [f"recipe={args.recipe}"] if args.recipe else []
    overrides += [f"model={args.model}"] if args.model else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Mean wall time of `step` over `steps` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def new_model(cfg: DictConfig, data: ImageData, device: torch.device) -> nn.Sequential:
    """The run's model as job.run builds it: seeded, on the device, channels_last; [0] normalises, [1] is the network."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.train_x.shape[1:], len(data.classes), cfg.dataset.mean, cfg.dataset.std)
    return model.to(device, memory_format=torch.channels_last)


def train_step(
    net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    precision: contextlib.AbstractContextManager | None = None,
) -> None:
    """One SGD step on a normalised batch, its forward pass under `precision` (as in fit: backward outside autocast)."""
    with precision or contextlib.nullcontext():
        loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def limit_seconds(cfg: DictConfig, data: ImageData, device: torch.device, plain: bool, args: argparse.Namespace) -> float:
    """Seconds per step on one fixed normalised batch: suite's format and precision, or (plain) fp32 and default format."""
    model = new_model(cfg, data, device)
    net = model[1].to(memory_format=torch.contiguous_format) if plain else model[1]
    optimizer = make_optimizer(net.parameters(), recipe_of(cfg))
    x = model[0](data.train_x[: args.batch_size].to(device).float() / 255)
    x = x.contiguous(memory_format=torch.contiguous_format if plain else torch.channels_last)
    y = data.train_y[: args.batch_size].to(device)

    return seconds_per_step(
        lambda: train_step(net, optimizer, x, y, contextlib.nullcontext() if plain else autocast(device, cfg.train.precision)),
        args.warmup,
        args.steps,
        device,
    )


def reference_dataset(cfg: DictConfig, augment: bool = True) -> torch.utils.data.Dataset:
    """The torchvision dataset object a user points at the dataset's files, with the usual per-sample transform."""
    ds, root = cfg.dataset, Path(cfg.data_dir)
    steps: list = [transforms.Resize((ds.image_size, ds.image_size))] if ds.name == "intel" else []
    steps.append(transforms.ToTensor())
    if augment and ds.augment.crop_pad:
        steps.append(transforms.RandomCrop(ds.image_size, padding=ds.augment.crop_pad, padding_mode="reflect"))
    if augment and ds.augment.flip:
        steps.append(transforms.RandomHorizontalFlip())
    transform = transforms.Compose([*steps, transforms.Normalize(ds.mean, ds.std)])
    if ds.name == "mnist":
        return torchvision.datasets.MNIST(root, train=True, transform=transform)
    if ds.name == "cifar10" and (root / "cifar-10-batches-py").is_dir():
        return torchvision.datasets.CIFAR10(root, train=True, transform=transform)
    if ds.name == "cifar10":
        return torchvision.datasets.ImageFolder(root / "cifar10" / "train", transform=transform)
    if ds.name == "intel":
        return torchvision.datasets.ImageFolder(_unnest(root / "intel" / "seg_train"), transform=transform)
    raise RuntimeError(f"Invalid dataset {ds.name}: the reference pipeline knows mnist, cifar10 and intel")


def reference_loader(dataset: torch.utils.data.Dataset, indices: torch.Tensor, cfg: DictConfig, workers: int) -> DataLoader:
    """DataLoader(shuffle=True) over the images at `indices` (positions in the train split), seeded with cfg.seed."""
    return DataLoader(
        Subset(dataset, indices.tolist()),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pick_device(cfg.train.device).type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def plain_fgsm(net: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: torch.Tensor, eps: torch.Tensor, box: tuple) -> torch.Tensor:
    """The straightforward AOS batch: FGSM on every image, kept where `attack` is set (x normalised, eps and box per channel)."""
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(x_req), y), x_req)
    x_adv = torch.maximum(torch.minimum(x + eps * grad.sign(), box[1]), box[0])
    return torch.where(attack.view(-1, 1, 1, 1), x_adv, x)


def reference_seconds(
    cfg: DictConfig, data: ImageData, dataset: torch.utils.data.Dataset, indices: torch.Tensor, minority: list[int],
    device: torch.device, args: argparse.Namespace,
) -> float:
    """Seconds per step of the plain pipeline: DataLoader batches, fp32, default memory format; FGSM for aos."""
    net = new_model(cfg, data, device)[1].to(memory_format=torch.contiguous_format)
    optimizer = make_optimizer(net.parameters(), recipe_of(cfg))
    batches = itertools.chain.from_iterable(itertools.repeat(reference_loader(dataset, indices, cfg, args.workers)))
    mean, std = (torch.tensor(list(v), device=device).view(1, -1, 1, 1) for v in (cfg.dataset.mean, cfg.dataset.std))
    box = (-mean / std, (1 - mean) / std)  # [0, 1] pixels in normalised units
    is_minority = torch.zeros(len(data.classes), dtype=torch.bool, device=device)
    is_minority[minority] = True

    def step() -> None:
        x, y = (t.to(device, non_blocking=True) for t in next(batches))
        if cfg.method.name == "aos":
            attack = is_minority[y] & (torch.rand(len(y), device=device) < cfg.method.p)
            x = plain_fgsm(net, x, y, attack, cfg.method.eps / std, box)
        train_step(net, optimizer, x, y)

    return seconds_per_step(step, args.warmup, args.steps, device)


def suite_seconds(
    cfg: DictConfig, data: ImageData, x: torch.Tensor, y: torch.Tensor, minority: list[int], device: torch.device,
    args: argparse.Namespace,
) -> tuple[float, float, float]:
    """(seconds per step of fit over --steps steps, fraction of its images attacked, seconds of the --warmup-step fit)."""
    method = get_method(cfg.method.name)
    attacked: list[int] = []

    def run(steps: int) -> float:
        attacked.clear()
        model = new_model(cfg, data, device)
        sync(device)
        start = time.perf_counter()
        fit(
            model, training_set(x, y, method, cfg.method, minority, cfg.seed, cfg.train.epoch_size),
            replace(recipe_of(cfg), max_steps=steps), on_epoch=lambda epoch, values: attacked.append(values.get("adv_images", 0)),
        )
        sync(device)
        return time.perf_counter() - start

    warm = run(args.warmup)
    return run(args.steps) / args.steps, sum(attacked) / (args.steps * cfg.train.batch_size), warm


def startup_seconds(cfg: DictConfig, compose_s: float, load_s: float) -> dict[str, float]:
    """Start-up of one training run: a fresh interpreter's imports, config composition, data loading, MLflow run."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import aos_bench.__main__, aos_bench.job"], check=True, cwd=ROOT)
    times = {"imports": time.perf_counter() - start, "config": compose_s, "data": load_s, "rejected": rejected_seconds()}
    with tempfile.TemporaryDirectory() as store:
        tracked = OmegaConf.merge(cfg, {"tracking": {"uri": f"sqlite:///{store}/mlflow.db"}})
        for key in ("mlflow_new_store", "mlflow_next_run"):
            start = time.perf_counter()
            with job_run(tracked, {"dataset": cfg.dataset.name}):
                pass
            times[key] = time.perf_counter() - start
    base = times["imports"] + times["config"] + times["data"]
    return times | {"total": base + times["mlflow_new_store"], "total_existing_store": base + times["mlflow_next_run"]}


def rejected_seconds() -> float:
    """Wall time of a fresh `python -m aos_bench train.lr=-1` until it exits with its one-line error (goal: <= 2 s)."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, wherever the command starts
        result = subprocess.run([sys.executable, "-m", "aos_bench", "train.lr=-1"], cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode != 2 or result.stderr.count("\n") != 1:
        raise RuntimeError(f"train.lr=-1 was not rejected in one line with exit code 2:\n{result.stderr}")
    return seconds


def ratios(rate: dict[str, float], attacked: float | None) -> dict:
    """suite/reference and suite/limit per method; AOS over ROS time per image, with its bound 1 + AOS_BUDGET x f."""
    methods = [key.split("/")[1] for key in rate if key.startswith("suite/")]
    out: dict = {
        "suite_over_reference": {m: rate[f"suite/{m}"] / rate[f"reference/{m}"] for m in methods},
        "suite_over_limit": {m: rate[f"suite/{m}"] / rate["limit"] for m in methods},
        "aos_over_ros": None,
        "aos_bound": None,
    }
    if attacked is not None and "ros" in methods:
        out["aos_over_ros"] = rate["suite/ros"] / rate["suite/aos"]
        out["aos_bound"] = 1 + AOS_BUDGET * attacked
    return out


def measure_round(
    args: argparse.Namespace, name: str, data: ImageData, dataset: torch.utils.data.Dataset, subset: ImbalancedSubset,
    device: torch.device,
) -> tuple[dict[str, float], float | None]:
    """Seconds per step of every pipeline, measured once each, and the fraction of its images the suite's AOS attacked."""
    cfg = config(args, name)
    x, y = data.train_x[subset.indices].to(device), data.train_y[subset.indices].to(device)
    per_step = {"limit": limit_seconds(cfg, data, device, False, args), "limit_plain": limit_seconds(cfg, data, device, True, args)}
    attacked = None
    for method in args.methods.split(","):
        mcfg = config(args, name, method)
        positions = get_method(method).resample(y.cpu(), torch.Generator().manual_seed(cfg.seed))
        indices = subset.indices[positions]
        per_step[f"reference/{method}"] = reference_seconds(mcfg, data, dataset, indices, subset.minority_classes, device, args)
        per_step[f"suite/{method}"], fraction, _ = suite_seconds(mcfg, data, x, y, subset.minority_classes, device, args)
        attacked = fraction if method == "aos" else attacked
    return per_step, attacked


def compile_figures(
    args: argparse.Namespace, name: str, data: ImageData, subset: ImbalancedSubset, device: torch.device, per_step: dict
) -> dict:
    """Per method: train.compile=true's seconds per step (added to per_step), compile time and the saving over a default run."""
    x, y = data.train_x[subset.indices].to(device), data.train_y[subset.indices].to(device)
    figures = {}
    for method in args.methods.split(","):
        cfg = OmegaConf.merge(config(args, name, method), {"train": {"compile": True}})
        compiled_s, _, warm_s = suite_seconds(cfg, data, x, y, subset.minority_classes, device, args)
        per_step[f"suite+compile/{method}"] = compiled_s
        positions = get_method(method).resample(y, torch.Generator(device).manual_seed(cfg.seed))
        run_steps = cfg.train.epochs * math.ceil(epoch_images(y, positions, cfg.train.epoch_size) / args.batch_size)
        figures[method] = {
            "compile_s": warm_s - args.warmup * compiled_s,
            "default_run_steps": run_steps,
            "default_run_saving_s": run_steps * (per_step[f"suite/{method}"] - compiled_s),
        }
    return figures


def bench_dataset(args: argparse.Namespace, name: str) -> dict:
    """Every pipeline's images per second on one dataset (median of --repeats rounds), the ratios and the start-up time."""
    start = time.perf_counter()
    cfg = config(args, name)
    compose_s = time.perf_counter() - start
    device = pick_device(cfg.train.device)
    start = time.perf_counter()
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    load_s = time.perf_counter() - start
    startup = startup_seconds(cfg, compose_s, load_s)
    subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
    dataset = reference_dataset(cfg)
    if not torch.equal(torch.as_tensor(dataset.targets), data.train_y):
        raise RuntimeError(f"the reference {type(dataset).__name__}'s labels differ from load_data's: not the same images")
    rounds = [measure_round(args, name, data, dataset, subset, device) for _ in range(args.repeats)]
    per_step = {key: statistics.median(r[0][key] for r in rounds) for key in rounds[0][0]}
    attacked = None if rounds[0][1] is None else statistics.mean(r[1] for r in rounds)
    compiled = compile_figures(args, name, data, subset, device, per_step) if args.compile else {}
    rate = {key: args.batch_size / seconds for key, seconds in per_step.items()}
    return {
        "dataset": name,
        "model": OmegaConf.to_container(cfg.model),
        "imbalance": OmegaConf.to_container(cfg.imbalance),
        "reference_dataset": type(dataset).__name__,
        "images_per_s": rate,
        **ratios(rate, attacked),
        "attacked_fraction": attacked,
        "compile": compiled,
        "startup_s": startup,
    }


def machine(device: torch.device) -> dict:
    """What ran the benchmark: processor, torch build, threads, and the machine's load (1-minute average)."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else []
        processor = f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores"
    return {"device": device.type, "processor": processor, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_1min": os.getloadavg()[0]}


def goal_lines(result: dict) -> list[str]:
    """The issue's goals, each marked met or not met by this run's figures."""
    lines = []
    for key, goal in GOALS.items():
        for method in ("base", "ros"):
            value = result[key].get(method)
            if value is not None:
                lines.append(f"{key} ({method}) = {value:.2f} >= {goal}: {'met' if value >= goal else 'NOT met'}")
    if result["aos_over_ros"] is not None:
        met = result["aos_over_ros"] <= result["aos_bound"]
        per_attacked = (result["aos_over_ros"] - 1) / result["attacked_fraction"]
        lines.append(
            f"aos/ros time per image = {result['aos_over_ros']:.3f} <= 1 + {AOS_BUDGET} x f = {result['aos_bound']:.3f} "
            f"(f = {result['attacked_fraction']:.3f}): {'met' if met else 'NOT met'}; one attacked image costs "
            f"{per_attacked:.2f} of a training step per image (goal <= {AOS_BUDGET})"
        )
    return lines


def markdown(result: dict, setup: dict, command: str) -> str:
    """One dataset's section of results/bench_<device>.md."""
    model = ", ".join(f"{k}={v}" for k, v in result["model"].items())
    rows = [f"| {key} | {rate:,.0f} | {1000 * setup['batch_size'] / rate:.1f} |" for key, rate in result["images_per_s"].items()]
    start = result["startup_s"]
    return "\n".join([
        f"## {result['dataset']} on {setup['device']}, {setup['threads']} torch threads, train.precision={setup['precision']}",
        "",
        f"`{command}`",
        "",
        f"{setup['processor']}; torch {setup['torch']}, {setup['threads']} torch threads; 1-minute load average "
        f"{setup['load_1min']:.2f} before, {setup['load_1min_after']:.2f} after. Model: {model}. Batch {setup['batch_size']}, "
        f"{setup['steps']} timed steps after {setup['warmup']} warm-up steps, median of {setup['repeats']} rounds."
        f" Reference dataset object: {result['reference_dataset']}.",
        "",
        "| pipeline | images/s | ms/step |",
        "|---|---:|---:|",
        *rows,
        "",
        *(f"- {line}" for line in goal_lines(result)),
        f"- suite/reference: {fmt(result['suite_over_reference'])}; suite/limit: {fmt(result['suite_over_limit'])}",
        *(f"- compile ({m}): {c['compile_s']:.1f} s of compilation; over a default run of {c['default_run_steps']} steps it saves "
          f"{c['default_run_saving_s']:.1f} s" for m, c in result["compile"].items()),
        f"- start-up: {start['total']:.2f} s = imports {start['imports']:.2f} (fresh interpreter) + config {start['config']:.2f} "
        f"+ data {start['data']:.2f} + MLflow run {start['mlflow_new_store']:.2f} in a new store; "
        f"{start['total_existing_store']:.2f} s with the run in an existing store ({start['mlflow_next_run']:.2f})",
        f"- a rejected command (`python -m aos_bench train.lr=-1`): {start['rejected']:.2f} s to its one-line error, exit code 2",
        "",
    ])


def fmt(values: dict[str, float]) -> str:
    """{'base': 1.234} as 'base 1.23'."""
    return ", ".join(f"{key} {value:.2f}" for key, value in values.items())


def write_section(path: Path, key: str, text: str, script: str = "bench.py") -> None:
    """Replace the section called `key` of `script` in the results file (between its markers), or append it; other text stays."""
    begin, end = f"<!-- {script} {key} begin -->", f"<!-- {script} {key} end -->"
    block = f"{begin}\n{text}{end}\n"
    old = path.read_text() if path.exists() else f"# Training throughput\n\nSections written by `scripts/{script} --write`.\n\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old + ("" if old.endswith("\n\n") else "\n") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main(argv: list[str] | None = None) -> dict:
    """Benchmark every requested dataset; print tables or one JSON object, and write the results file if asked."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    setup = machine(device) | {"batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}
    setup["precision"] = args.precision
    results = {name: bench_dataset(args, name) for name in args.dataset.split(",")}
    setup["load_1min_after"] = os.getloadavg()[0]
    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    keys = ("suite_over_reference", "suite_over_limit", "aos_over_ros", "aos_bound", "attacked_fraction", "images_per_s", "startup_s", "compile")
    summary = {**setup, "command": command.strip(), **{key: {name: r[key] for name, r in results.items()} for key in keys}}
    for name, result in results.items():
        text = markdown(result, setup, command.strip())
        if not args.json:
            print(text)
        if args.write:
            write_section(ROOT / "results" / f"bench_{device.type}.md", f"{name}, {setup['threads']} threads, precision={args.precision}", text)
    if args.json:
        print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
