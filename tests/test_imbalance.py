"""Exact class counts of the step, linear and exp imbalances, on the real label arrays where present."""

import numpy as np
import pytest
import torch
from conftest import DATA, needs
from omegaconf import OmegaConf

from aos_bench.data import load_data
from aos_bench.errors import UsageError
from aos_bench.imbalance import make_subset

MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist_labels() -> tuple[torch.Tensor, list[str]]:
    data = load_data(OmegaConf.create({"name": "mnist", "download": False}), DATA, None)
    return data.train_y, data.classes


@pytest.fixture(scope="module")
def cifar_labels() -> tuple[torch.Tensor, list[str]]:
    data = load_data(OmegaConf.create({"name": "cifar10", "download": False}), DATA, None)
    return data.train_y, data.classes


@pytest.fixture(scope="module")
def intel_labels() -> tuple[torch.Tensor, list[str]]:
    data = load_data(OmegaConf.create({"name": "intel", "image_size": 64, "download": False}), DATA, None)
    return data.train_y, data.classes


def step(mu: float, rho: float, minority: object = "random", n_max: int | None = None) -> dict:
    return {"kind": "step", "mu": mu, "rho": rho, "minority": minority, "n_max": n_max}


def linear(rho: float, minority: str = "random", n_max: int | None = None) -> dict:
    return {"kind": "linear", "rho": rho, "minority": minority, "n_max": n_max}


def exp(rho: float, minority: str = "random") -> dict:
    return {"kind": "exp", "rho": rho, "minority": minority, "n_max": None}


def drawn_counts(labels: torch.Tensor, subset) -> list[int]:
    """Class counts of the images the subset really holds (not what it claims)."""
    assert len(set(subset.indices.tolist())) == len(subset.indices), "an image was drawn twice"
    return torch.bincount(labels[subset.indices], minlength=len(subset.sizes)).tolist()


@needs("MNIST")
@pytest.mark.parametrize(
    ("mu", "rho", "k", "n_min"),
    [(0.3, 500, 3, 11), (0.9, 500, 9, 11), (0.5, 10, 5, 542), (0.25, 100, 3, 54), (0.05, 2, 1, 2710), (0.85, 7, 9, 774), (0.35, 3, 4, 1807)],
)
def test_step_on_mnist_gives_exact_counts(mnist_labels, mu, rho, k, n_min):
    labels, classes = mnist_labels
    subset = make_subset(labels, classes, step(mu, rho), data_seed=3)
    n_max = min(MNIST_COUNTS)  # 5421, class 5
    expected = [n_min if c in subset.minority_classes else n_max for c in range(10)]
    assert len(subset.minority_classes) == k
    assert drawn_counts(labels, subset) == expected == subset.sizes


@needs("cifar10")
@pytest.mark.parametrize(("mu", "rho", "k", "n_min"), [(0.4, 60, 4, 83), (0.6, 60, 6, 83), (0.8, 60, 8, 83), (0.9, 500, 9, 10)])
def test_step_on_cifar10_gives_exact_counts(cifar_labels, mu, rho, k, n_min):
    labels, classes = cifar_labels
    subset = make_subset(labels, classes, step(mu, rho), data_seed=0)
    assert len(subset.minority_classes) == k
    assert drawn_counts(labels, subset) == [n_min if c in subset.minority_classes else 5000 for c in range(10)]


@needs("intel")
@pytest.mark.parametrize(("mu", "k"), [(0.4, 2), (0.6, 4), (0.8, 5)])  # floor(mu * 6 + 0.5)
def test_step_on_intel_rounds_k_and_counts(intel_labels, mu, k):
    labels, classes = intel_labels
    subset = make_subset(labels, classes, step(mu, 20), data_seed=1)
    n_max = 2190  # buildings, the smallest class
    assert len(subset.minority_classes) == k
    assert drawn_counts(labels, subset) == [110 if c in subset.minority_classes else n_max for c in range(6)]


@needs("MNIST")
def test_minority_modes_first_last_and_lists(mnist_labels):
    labels, classes = mnist_labels
    assert make_subset(labels, classes, step(0.3, 500, "first"), 0).minority_classes == [0, 1, 2]
    assert make_subset(labels, classes, step(0.3, 500, "last"), 0).minority_classes == [7, 8, 9]
    assert make_subset(labels, classes, step(0.2, 500, [4, "9"]), 0).minority_classes == [4, 9]
    subset = make_subset(labels, classes, step(0.2, 50, [1, 2]), 0)
    assert drawn_counts(labels, subset) == [108 if c in (1, 2) else 5421 for c in range(10)]


@needs("MNIST")
def test_same_data_seed_same_subset_and_other_seed_differs(mnist_labels):
    labels, classes = mnist_labels
    first = make_subset(labels, classes, step(0.3, 500), 7)
    again = make_subset(labels, classes, step(0.3, 500), 7)
    other = make_subset(labels, classes, step(0.3, 500), 8)
    assert torch.equal(first.indices, again.indices) and first.minority_classes == again.minority_classes
    assert not torch.equal(first.indices, other.indices)


@needs("cifar10")
@pytest.mark.parametrize("rho", [60, 500, 10])
def test_linear_on_cifar10_gives_exact_counts(cifar_labels, rho):
    labels, classes = cifar_labels
    n_min = max(1, round(5000 / rho))
    expected = sorted(round(n_min + (5000 - n_min) * i / 9) for i in range(10))
    subset = make_subset(labels, classes, linear(rho), data_seed=2)
    assert sorted(drawn_counts(labels, subset)) == expected
    assert subset.minority_classes == [c for c in range(10) if subset.sizes[c] < 5000]
    assert len(subset.minority_classes) == 9


@needs("intel")
def test_linear_first_and_last_orders(intel_labels):
    labels, classes = intel_labels
    ascending = make_subset(labels, classes, linear(20, "first"), 0)
    assert drawn_counts(labels, ascending) == [110, 526, 942, 1358, 1774, 2190]  # round(110 + 2080 * i / 5)
    assert make_subset(labels, classes, linear(20, "last"), 0).sizes == [2190, 1774, 1358, 942, 526, 110]


@needs("MNIST")
def test_n_max_sets_the_majority_size(mnist_labels):
    labels, classes = mnist_labels
    subset = make_subset(labels, classes, step(0.3, 100, "first", n_max=1000), 0)
    assert drawn_counts(labels, subset) == [10] * 3 + [1000] * 7


@needs("MNIST")
def test_none_keeps_the_split_as_published(mnist_labels):
    labels, classes = mnist_labels
    subset = make_subset(labels, classes, {"kind": "none"}, 0)
    assert drawn_counts(labels, subset) == MNIST_COUNTS and subset.minority_classes == []


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (step(0.04, 10), "imbalance.mu=0.04 gives k=0"),
        (step(0.95, 10), "imbalance.mu=0.95 gives k=10"),
        (step(0.3, 10, [0, 1]), "names 2 classes but mu=0.3 gives k=3"),
        (step(0.3, 10, [0, 1, 42]), "imbalance.minority has 42"),
        (step(0.3, 10, n_max=101), "imbalance.n_max=101"),
    ],
)
def test_bad_settings_raise_one_line_errors(cfg, message):
    labels = torch.arange(10).repeat_interleave(100)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")) as error:
        make_subset(labels, [str(c) for c in range(10)], cfg, 0)
    assert "\n" not in str(error.value)


@needs("cifar10")
def test_exp_on_cifar10_gives_exact_long_tailed_counts(cifar_labels):
    labels, classes = cifar_labels
    subset = make_subset(labels, classes, exp(100, "first"), data_seed=0)
    # round(5000 * 100^(-i / 9)), i = 9..0: class 0 smallest with minority=first
    assert drawn_counts(labels, subset) == [50, 83, 139, 232, 387, 646, 1077, 1797, 2997, 5000] == subset.sizes
    assert subset.minority_classes == list(range(9))
    shuffled = make_subset(labels, classes, exp(100), data_seed=4)
    assert sorted(drawn_counts(labels, shuffled)) == [50, 83, 139, 232, 387, 646, 1077, 1797, 2997, 5000]
    assert shuffled.sizes != subset.sizes  # data_seed draws another class order


@needs("MNIST")
def test_exp_on_mnist_last_order(mnist_labels):
    labels, classes = mnist_labels
    subset = make_subset(labels, classes, exp(500, "last"), data_seed=0)
    assert drawn_counts(labels, subset) == [5421, 2718, 1362, 683, 342, 172, 86, 43, 22, 11]


def cao_reference_indices(labels: np.ndarray, sizes: list[int], seed: int) -> np.ndarray:
    """Cao et al.'s IMBALANCECIFAR10.gen_imbalanced_data as their code runs it: numpy's global seed, then each class's
    indices shuffled in place and cut to its size, class 0 first."""
    np.random.seed(seed)
    picked = []
    for c, size in enumerate(sizes):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        picked.append(idx[:size])
    return np.concatenate(picked)


@pytest.mark.parametrize(
    ("rho", "sizes"),
    [
        (100, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]),  # 12,406 images: CIFAR-10-LT, Cao et al. 2019
        (10, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]),  # 20,431 images
    ],
)
def test_cao2019_convention_gives_cao_et_als_long_tailed_cifar(rho, sizes):
    labels = torch.arange(10).repeat(5000)  # CIFAR-10's 5,000 images a class, interleaved as in the pickled batches
    cfg = exp(rho, "last") | {"convention": "cao2019"}
    subset = make_subset(labels, [str(c) for c in range(10)], cfg, data_seed=3)
    assert subset.sizes == drawn_counts(labels, subset) == sizes  # truncated, not rounded: 1796 where round gives 1797
    assert subset.minority_classes == list(range(1, 10))
    assert torch.equal(subset.indices, torch.from_numpy(cao_reference_indices(labels.numpy(), sizes, seed=3)))
