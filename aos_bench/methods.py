"""The compared methods: how each changes the training set, each batch, the loss and the prediction.

A method is an entry of METHODS, a Method of optional hooks (None = the plain choice):
- `synthesize` adds images to the imbalanced set once before training (SMOTE);
- `resample` turns the training labels into the index list one pass of training runs over;
- `perturb` rewrites a batch of [0, 1] images before the optimizer step (AOS): a Perturb, whose random draws
  train.step_draws makes for both training paths, and its forms for fit() (one model) and fit_stack() (a stack);
- `loss` replaces cross-entropy, given the training set's class counts and the fraction of steps done;
- `adjust` turns test-time logits into the scores whose argmax is the prediction (thresholding).
Adding a method = one function or two here and its hooks in METHODS, its Entry (display name, parameter rules,
stacked or not) in aos_bench/registry.py, one file in conf/method/, a row in docs/methods.md (steps: docs/methods.md).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from aos_bench.errors import UsageError


@dataclass(frozen=True)
class Perturb:
    """A batch hook: its draws for a batch of n images (made before it runs, by train.step_draws on both training
    paths, so that the two cannot draw differently) and what it does with them, on one model and on a stack."""

    draw: Callable[[int, Mapping, torch.Generator], torch.Tensor]  # (n, cfg, gen) -> the batch's draws, (n, ...)
    batch: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (model, x, y, is_minority, cfg, draws) -> (x, perturbed positions)
    # (forward, params, buffers, x, y, models, is_minority, cfgs, draws) -> (x, perturbed mask (models, batch)), on the
    # rows `models` of a stack (aos_bench.train_stacked); None = fit_stack() refuses the method
    stack: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass(frozen=True)
class Method:
    resample: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (labels, gen) -> positions into labels
    perturb: Perturb | None = None  # rewrites each batch
    loss: Callable[..., torch.Tensor] | None = None  # (logits, y, counts, cfg, done) -> loss; done = fraction of steps taken
    adjust: Callable[[torch.Tensor, torch.Tensor, Mapping], torch.Tensor] | None = None  # (logits, counts, cfg) -> scores
    synthesize: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None  # (x, y, cfg, seed) -> (x, y), uint8 images


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


def random_undersample(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RUS: every class cut to the smallest class size, its images drawn uniformly without replacement."""
    counts = torch.bincount(labels)
    target = int(counts[counts > 0].min())
    picked = []
    for c in range(len(counts)):
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=gen, device=gen.device)[:target]])
    return torch.cat(picked)


def smote_class(members: np.ndarray, target: int, k: int, seed: int) -> np.ndarray:
    """`target - len(members)` SMOTE images of one class (flattened floats), with imbalanced-learn's SMOTE."""
    from imblearn.over_sampling import SMOTE  # imported here: only this method needs it

    if len(members) == 1:  # no neighbour: the only segment is the image itself
        return np.repeat(members, target - 1, axis=0)
    # SMOTE needs a second class to resample against; one blank image that it leaves alone (neighbours are drawn
    # within the resampled class only)
    x = np.concatenate([members, np.zeros_like(members[:1])])
    y = np.r_[np.zeros(len(members), dtype=int), 1]
    smote = SMOTE(sampling_strategy={0: target}, k_neighbors=min(k, len(members) - 1), random_state=seed)
    return smote.fit_resample(x, y)[0][len(x) :]


def smote(x: torch.Tensor, y: torch.Tensor, cfg: Mapping, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SMOTE in pixel space: every class brought to the largest size by interpolating between same-class neighbours."""
    counts = torch.bincount(y).tolist()
    images, labels = [x], [y]
    for c, count in enumerate(counts):
        if 0 < count < max(counts):
            members = x[y == c].flatten(1).float().cpu().numpy()
            new = smote_class(members, max(counts), cfg["k"], seed + c)
            images.append(torch.from_numpy(new).round_().clamp_(0, 255).to(x.dtype).view(-1, *x.shape[1:]).to(x.device))
            labels.append(torch.full((len(new),), c, dtype=y.dtype, device=y.device))
    return torch.cat(images), torch.cat(labels)


def class_weights(counts: torch.Tensor, beta: float | None) -> torch.Tensor:
    """Per-class loss weights summing to N: 1 / n_c, or 1 / effective number (1 - beta^n_c) / (1 - beta) (Cui et al.)."""
    counts = counts.double()
    weights = 1 / counts if beta is None else (1 - beta) / (1 - beta**counts)
    return (weights / weights.sum() * len(counts)).float()


def reweighted_ce(logits: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, cfg: Mapping, done: float) -> torch.Tensor:
    """Cross-entropy averaged with class weights: sum_i w_{y_i} CE_i / sum_i w_{y_i}."""
    return F.cross_entropy(logits, y, weight=class_weights(counts, cfg.get("beta")))


def focal(logits: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, cfg: Mapping, done: float) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): the batch mean of -(1 - p_y)^gamma log p_y."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return ((1 - torch.exp(-ce)) ** cfg["gamma"] * ce).mean()


def ldam_margins(counts: torch.Tensor, max_m: float) -> torch.Tensor:
    """LDAM's per-class margins, proportional to n_c^(-1/4), the largest (the smallest class's) equal to max_m."""
    margins = counts.float() ** -0.25
    return margins * (max_m / margins.max())


def ldam_drw(logits: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, cfg: Mapping, done: float) -> torch.Tensor:
    """LDAM-DRW (Cao et al. 2019): CE of s * (logits - m_y at the true class), re-weighted by effective number from drw_start on."""
    margin = F.one_hot(y, logits.shape[1]) * ldam_margins(counts, cfg["max_m"])[y].unsqueeze(1)
    weight = class_weights(counts, cfg["beta"]) if done >= cfg["drw_start"] else None
    return F.cross_entropy(cfg["s"] * (logits - margin), y, weight=weight)


def log_priors(counts: torch.Tensor) -> torch.Tensor:
    """log of the training set's class frequencies."""
    return torch.log(counts.float() / counts.sum())


def balanced_softmax(logits: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, cfg: Mapping, done: float) -> torch.Tensor:
    """Balanced softmax (Ren et al. 2020), or the logit-adjusted loss (Menon et al. 2021): CE of logits + tau * log prior."""
    return F.cross_entropy(logits + cfg["tau"] * log_priors(counts), y)


def prior_correction(logits: torch.Tensor, counts: torch.Tensor, cfg: Mapping) -> torch.Tensor:
    """Thresholding (Buda et al. 2018): log of softmax(logits) / prior, so the prediction is argmax p(c | x) / p(c)."""
    return F.log_softmax(logits.float(), 1) - log_priors(counts)


def frozen(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model`'s forward on its parameters and on copies of its buffers: BatchNorm updates its running statistics in
    place, so an attack through this leaves the model's own as they were."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    params = dict(model.named_parameters())
    return lambda x: functional_call(model, (params, buffers), (x,))


def fgsm(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int = 1,
    majority: torch.Tensor | None = None,
) -> torch.Tensor:
    """`steps` signed-gradient steps of eps / steps, projected on the eps-ball around x and on [0, 1], through the
    forward `logits_of` (frozen(model), or a stack of models on x of shape (models, batch, ...) with an eps per model),
    writing no parameter grad. Untargeted: up CE(logits, y). With a `majority` class mask: down CE(logits, t), t = the
    majority class with the highest logit at the first step (after M2m)."""
    clean = x.detach()
    target, x = None, clean
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        logits = logits_of(x)
        if majority is not None and target is None:
            target = logits.detach().masked_fill(~majority, -torch.inf).argmax(-1)  # the majority class it is closest to
        wanted = y if target is None else target
        loss = F.cross_entropy(logits.flatten(0, -2), wanted.flatten(), reduction="sum")  # a stack's rows as one batch
        (grad,) = torch.autograd.grad(loss, x)  # input gradient only: no parameter .grad is written
        step = eps / steps * grad.sign() * (1 if target is None else -1)
        x = torch.minimum(torch.maximum(x.detach() + step, clean - eps), clean + eps).clamp_(0, 1)
    return x


def minority_draw(n: int, cfg: Mapping, gen: torch.Generator) -> torch.Tensor:
    """AOS's draws for a batch of n images: which of them to attack if minority, each with probability p."""
    return torch.rand(n, generator=gen, device=gen.device) < cfg["p"]


def adversarial_minority(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, is_minority: torch.Tensor, cfg: Mapping, draws: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """AOS: each minority image that `draws` marks replaced by its FGSM example; returns (batch, attacked positions)."""
    attacked = (is_minority[y] & draws).nonzero().flatten()  # one host sync: the attack's cost follows its size
    if len(attacked):
        majority = ~is_minority if cfg.get("targeted") else None
        x = x.index_copy(0, attacked, fgsm(frozen(model), x[attacked], y[attacked], cfg["eps"], cfg.get("steps", 1), majority))
    return x, attacked


def adversarial_minority_stack(
    forward: Callable[..., torch.Tensor], params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, models: list[int],
    is_minority: torch.Tensor, cfgs: Sequence[Mapping], draws: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AOS on the rows `models` of a stack's batch x (models of the stack, batch, ...) at a fixed shape: every image of
    those rows goes through FGSM and the minority images that `draws` (len(models), batch) marks take it (no host
    sync per batch); is_minority and cfgs are those of `models`. Returns (x, the attacked mask (len(models), batch))."""
    mask = is_minority.gather(1, y[models]) & draws
    x = x.clone()
    kinds = [(cfg.get("steps", 1), bool(cfg.get("targeted"))) for cfg in cfgs]  # FGSM steps, targeted
    for steps, targeted in sorted(set(kinds)):  # one fgsm() per attack kind; eps may differ between models
        rows = [i for i, kind in enumerate(kinds) if kind == (steps, targeted)]
        chosen = [models[i] for i in rows]
        sub_params = {k: v.detach()[chosen] for k, v in params.items()}
        sub_buffers = {k: v[chosen] for k, v in buffers.items()}
        eps = torch.tensor([float(cfgs[i]["eps"]) for i in rows], device=x.device).view(-1, *[1] * (x.dim() - 1))
        majority = ~is_minority[rows].unsqueeze(1) if targeted else None
        adv = fgsm(functools.partial(forward, sub_params, sub_buffers), x[chosen], y[chosen], eps, steps, majority)
        x[chosen] = torch.where(mask[rows].view(*mask[rows].shape, *[1] * (x.dim() - 2)), adv, x[chosen])
    return x, mask


METHODS = {
    "base": Method(keep_all),
    "ros": Method(random_oversample),
    "aos": Method(random_oversample, perturb=Perturb(minority_draw, adversarial_minority, adversarial_minority_stack)),
    "rus": Method(random_undersample),
    "smote": Method(keep_all, synthesize=smote),
    "reweight": Method(keep_all, loss=reweighted_ce),
    "focal": Method(keep_all, loss=focal),
    "ldam_drw": Method(keep_all, loss=ldam_drw),
    "balanced_softmax": Method(keep_all, loss=balanced_softmax),
    "threshold": Method(keep_all, adjust=prior_correction),
}

def get_method(name: str) -> Method:
    """The METHODS entry called `name`."""
    if name not in METHODS:
        raise UsageError(f"method.name={name!r} is not one of: {', '.join(METHODS)}")
    return METHODS[name]
