"""The compared methods: how each changes the training set and each batch.

A method is an entry of METHODS: `resample` turns the imbalanced subset's labels into the index list one pass of
training runs over; `perturb` (or None) rewrites a batch of [0, 1] images before the optimizer step.
Adding a method = one function or two here, one entry in METHODS, one file in conf/method/.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from aos_bench.data import UsageError


@dataclass(frozen=True)
class Method:
    resample: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (labels, gen) -> positions into labels
    perturb: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None  # (model, x, y, is_minority, cfg, gen) -> (x, n)


def keep_all(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """BASE: every image of the imbalanced set, once."""
    return torch.arange(len(labels), device=labels.device)


def random_oversample(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ROS: each image once, plus copies drawn uniformly with replacement until every class has the largest size."""
    counts = torch.bincount(labels)
    target = int(counts.max())
    picked = []
    for c, count in enumerate(counts.tolist()):
        members = (labels == c).nonzero().flatten()
        extra = torch.randint(count, (target - count,), generator=gen, device=gen.device) if count else members[:0]
        picked.append(torch.cat([members, members[extra]]))
    return torch.cat(picked)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """clamp(x + eps * sign(grad_x CE(model(x), y)), 0, 1), leaving parameter grads and BatchNorm statistics as they were."""
    x = x.detach().requires_grad_(True)
    # BatchNorm updates its running statistics in place: hand it copies so the model's own stay untouched.
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    params = dict(model.named_parameters())
    loss = F.cross_entropy(functional_call(model, (params, buffers), (x,)), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)  # input gradient only: no parameter .grad is written
    return (x.detach() + eps * grad.sign()).clamp_(0, 1)


def adversarial_minority(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, is_minority: torch.Tensor, cfg: Mapping, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """AOS: each minority image replaced with probability p by its FGSM example; returns (batch, attacked positions)."""
    draw = torch.rand(len(y), generator=gen, device=y.device) < cfg["p"]
    attacked = (is_minority[y] & draw).nonzero().flatten()  # one host sync: the attack's cost follows its size
    if len(attacked):
        x = x.index_copy(0, attacked, fgsm(model, x[attacked], y[attacked], cfg["eps"]))
    return x, attacked


METHODS = {
    "base": Method(keep_all, None),
    "ros": Method(random_oversample, None),
    "aos": Method(random_oversample, adversarial_minority),
}


def get_method(name: str) -> Method:
    """The METHODS entry called `name`."""
    if name not in METHODS:
        raise UsageError(f"method.name={name!r} is not one of: {', '.join(METHODS)}")
    return METHODS[name]


def validate_method(cfg: Mapping) -> None:
    """Check a method config's values before any training starts."""
    get_method(cfg["name"])
    if "p" in cfg and not 0 <= cfg["p"] <= 1:
        raise UsageError(f"method.p={cfg['p']} must be a probability in [0, 1]")
    if "eps" in cfg and not cfg["eps"] >= 0:
        raise UsageError(f"method.eps={cfg['eps']} must be >= 0 (pixel units of [0, 1] images)")
