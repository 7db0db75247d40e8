"""Step, linear and exponential imbalance: exact class sizes and a seeded choice of images.

Definitions (also in docs/imbalance.md, held by tests/test_imbalance.py):
- n_max = the smallest class size of the train split unless `imbalance.n_max` is set; n_min = max(1, round(n_max / rho)).
- step: k = floor(mu * N + 0.5) minority classes (1 <= k <= N-1) of n_min images, the others n_max.
- linear: class sizes round(n_min + (n_max - n_min) * i / (N - 1)), i = 0..N-1, over a class order; every class
  smaller than the largest is minority.
- exp (long-tailed): class sizes max(1, round(n_max * rho^(-i / (N - 1)))), i = 0..N-1 from the largest class, over
  a class order; every class smaller than the largest is minority.
`round` is Python's round (half to even). Images inside a class are drawn without replacement with `data_seed`,
so one dataset, imbalance and data_seed give the same subset whatever the method and training seed.
- exp under `imbalance.convention: cao2019`: the long-tailed CIFAR of Cao et al.'s code (imbalance_cifar.py), class 0
  the largest: sizes int(n_max * (1 / rho)^(i / (N - 1))), truncated (5000 2997 1796 1077 645 387 232 139 83 50 at
  rho = 100), and each class's first images after numpy's legacy shuffle seeded with data_seed, class by class.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aos_bench.errors import UsageError

# Under imbalance=none a class is minority when the largest class has more than this many times its images: 1.5, the
# lowest imbalance ratio of the KEEL repository's imbalanced data sets (docs/imbalance.md). 1 = every smaller class.
NATURAL_RHO = 1.5


@dataclass(frozen=True)
class Subset:
    indices: torch.Tensor  # int64 indices into the train split, grouped by class
    sizes: list[int]  # images per class, index = label
    minority_classes: list[int]  # labels treated as minority (AOS attacks these)
    minority_rule: str = ""  # why those classes are minority, in words, for the run's log


def make_subset(labels: torch.Tensor, classes: Sequence[str], cfg: Mapping, data_seed: int, dataset: Mapping | None = None) -> Subset:
    """Draw the imbalanced training subset described by the `imbalance` config; under `none`, the minority classes are
    those that natural_minority() finds by the `dataset` config (none without it, as for the built-in datasets)."""
    gen = torch.Generator().manual_seed(data_seed)
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    if cfg["kind"] == "none":
        return Subset(torch.arange(len(labels)), counts, *natural_minority(counts, classes, dataset or {}))
    n_max = majority_size(counts, cfg.get("n_max"))
    n_min = minority_size(n_max, cfg["rho"])
    if cfg.get("convention", "suite") == "cao2019":
        return cao2019_subset(labels, n_max, cfg, data_seed)
    rule = f"every class smaller than the largest ({cfg['kind']} imbalance)"
    if cfg["kind"] == "step":
        sizes, minority = step_sizes(classes, cfg["mu"], n_min, n_max, cfg.get("minority", "random"), gen)
        rule = f"the {len(minority)} classes cut to n_min={n_min} (step imbalance, imbalance.minority={cfg.get('minority', 'random')})"
    else:  # linear or exp: checks.RULES allows no other kind
        n = len(classes)
        profile = linear_profile(n_min, n_max, n) if cfg["kind"] == "linear" else exp_profile(n_max, cfg["rho"], n)
        sizes = ordered_sizes(profile, cfg.get("minority", "random"), gen)
        minority = [c for c, n in enumerate(sizes) if n < max(sizes)]
    return Subset(draw_images(labels, sizes, gen), sizes, minority, rule)


def natural_minority(counts: list[int], classes: Sequence[str], dataset: Mapping) -> tuple[list[int], str]:
    """Minority labels of a split kept at its own sizes, with their rule in words: dataset.minority_classes when set;
    else, with dataset.natural_minority, every class that the largest outnumbers more than dataset.minority_rho times."""
    named = dataset.get("minority_classes")
    if named is not None:
        chosen = sorted({class_index(c, classes, "dataset.minority_classes") for c in named})
        if len(chosen) == len(classes):
            raise UsageError(f"dataset.minority_classes names all {len(classes)} classes: leave at least one majority class")
        return chosen, "named by dataset.minority_classes"
    if not dataset.get("natural_minority", False):
        return [], "none (imbalance=none)"
    rho = dataset.get("minority_rho", NATURAL_RHO)
    largest = max(counts)
    minority = [c for c, n in enumerate(counts) if largest > rho * n]
    return minority, f"the largest class ({largest} images) has more than dataset.minority_rho={rho:g} times its images"


def majority_size(counts: list[int], n_max: int | None) -> int:
    """The majority class size: `n_max` if set, else the smallest class of the split."""
    if n_max is None:
        return min(counts)
    if not 1 <= n_max <= min(counts):
        raise UsageError(f"imbalance.n_max={n_max} must be between 1 and the smallest class size {min(counts)}")
    return int(n_max)


def minority_size(n_max: int, rho: float) -> int:
    """n_min = max(1, round(n_max / rho)), rho >= 1 (checks.RULES)."""
    return max(1, round(n_max / rho))


def minority_count(mu: float, n_classes: int) -> int:
    """k = floor(mu * N + 0.5), which must leave at least one class on each side."""
    k = math.floor(mu * n_classes + 0.5)
    if not 1 <= k <= n_classes - 1:
        raise UsageError(
            f"imbalance.mu={mu} gives k={k} minority classes of {n_classes}; "
            f"allowed: 1 <= floor(mu * {n_classes} + 0.5) <= {n_classes - 1}"
        )
    return k


def step_sizes(
    classes: Sequence[str], mu: float, n_min: int, n_max: int, minority: object, gen: torch.Generator
) -> tuple[list[int], list[int]]:
    """Class sizes and minority labels of a step imbalance."""
    n = len(classes)
    k = minority_count(mu, n)
    if isinstance(minority, str):
        chosen = ordered_classes(n, minority, gen)[:k]
    else:
        chosen = [class_index(c, classes) for c in minority]
        if len(set(chosen)) != k:
            raise UsageError(
                f"imbalance.minority={list(minority)} names {len(set(chosen))} classes but mu={mu} gives k={k}"
            )
    chosen = sorted(chosen)
    return [n_min if c in chosen else n_max for c in range(n)], chosen


def linear_profile(n_min: int, n_max: int, n_classes: int) -> list[int]:
    """Linear class sizes from the smallest to the largest: round(n_min + (n_max - n_min) * i / (N - 1))."""
    return [round(n_min + (n_max - n_min) * i / (n_classes - 1)) for i in range(n_classes)]


def exp_profile(n_max: int, rho: float, n_classes: int) -> list[int]:
    """Long-tailed class sizes from the smallest to the largest: max(1, round(n_max * rho^(-i / (N - 1)))), i = N-1..0."""
    return [max(1, round(n_max * rho ** (-i / (n_classes - 1)))) for i in reversed(range(n_classes))]


def cao2019_subset(labels: torch.Tensor, n_max: int, cfg: Mapping, data_seed: int) -> Subset:
    """The long-tailed subset as Cao et al.'s IMBALANCECIFAR10 draws it (class 0 largest, truncated sizes, numpy's
    legacy shuffle seeded with data_seed): their images exactly when `labels` come in torchvision's order; kind=exp and
    minority=last, as checks.combination_problem requires."""
    n = int(labels.max()) + 1
    sizes = [int(n_max * (1 / cfg["rho"]) ** (i / (n - 1))) for i in range(n)]  # int() truncates, as theirs does
    shuffle = np.random.RandomState(data_seed).shuffle  # = their np.random.seed(rand_number); np.random.shuffle
    picked = []
    for c, size in enumerate(sizes):
        members = np.flatnonzero(labels.numpy() == c)
        shuffle(members)
        picked.append(torch.from_numpy(members[:size]))
    minority = [c for c, size in enumerate(sizes) if size < max(sizes)]
    return Subset(torch.cat(picked), sizes, minority, "every class smaller than the largest (exp imbalance, convention cao2019)")


def ordered_sizes(profile: list[int], minority: str, gen: torch.Generator) -> list[int]:
    """Class sizes given by `profile` (smallest first) over the class order that `minority` (random, first or last:
    checks.combination_problem refuses a list here) picks."""
    sizes = [0] * len(profile)
    for c, size in zip(ordered_classes(len(profile), minority, gen), profile, strict=True):
        sizes[c] = size
    return sizes


def ordered_classes(n_classes: int, mode: str, gen: torch.Generator) -> list[int]:
    """Classes from the first to be made minority to the last."""
    if mode == "random":
        return torch.randperm(n_classes, generator=gen).tolist()
    return list(range(n_classes)) if mode == "first" else list(reversed(range(n_classes)))  # first or last: checks.RULES


def class_index(name: object, classes: Sequence[str], key: str = "imbalance.minority") -> int:
    """A class given as index or name, as its index; `key` names the setting that gave it in the error."""
    if isinstance(name, int) and 0 <= name < len(classes):
        return name
    if isinstance(name, str) and name in classes:
        return classes.index(name)
    raise UsageError(f"{key} has {name!r}: allowed are indices 0..{len(classes) - 1} or names {list(classes)}")


def draw_images(labels: torch.Tensor, sizes: list[int], gen: torch.Generator) -> torch.Tensor:
    """`sizes[c]` indices of class c drawn without replacement, class by class."""
    picked = []
    for c, size in enumerate(sizes):
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:size]])
    return torch.cat(picked)
