"""Many jobs' models trained as one network: the stacked training core behind `hydra/launcher=stacked`.

One small model keeps a GPU about 1% busy: its step is bound by kernel launches, not arithmetic. fit_stack() trains M
models of one architecture, in one process, as one network: torch.func.vmap turns their convolutions into grouped
ones and their linear layers into batched matmuls, so a step costs about the launches of one model's step.

Each model stays its own job: its own TrainingSet (images, method, positions) and generator, drawn in the same order
as fit() draws them, so that its batches, augmentation and AOS draws are those of its separate job; its own loss,
gradient clip and statistics. Only the float order differs, as it does with another thread count. Differences from
fit(), named where they are made:
- AOS attacks at a fixed shape: every row of the batch goes through FGSM and the Bernoulli mask picks the rows that
  change, with no host sync per batch (fit() attacks the picked rows only: on the CPU that costs less arithmetic).
- The images for adversarial_examples.png come from the first batch of the first epoch whose first batch had an
  attacked image, looked at once an epoch (fit() takes the first batch with one, looking at every step: the same
  batch, unless the first held no attacked minority image).
- Models must be free of BatchNorm and dropout (checks.stack_problem): under one fixed-shape attack, BatchNorm's batch
  statistics would be those of the whole batch, not of the attacked rows, and dropout's draws are not per job.
"""

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from aos_bench.methods import Method, fgsm
from aos_bench.train import (
    EXAMPLES,
    TrainingSet,
    autocast,
    augment_draws,
    diverged,
    epoch_batches,
    epoch_line,
    flip_shift,
    make_optimizer,
    planned_steps,
    schedule,
    to_input,
)

log = logging.getLogger(__name__)


def clip_each(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ for each model of a stack (dim 0 of every parameter): its gradient rescaled to `max_norm` when
    its global L2 norm is larger; returns which models were clipped."""
    norms = torch.stack([torch.linalg.vector_norm(p.grad.flatten(1), dim=1) for p in params])  # (parameters, models)
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_ computes it
    for p in params:
        p.grad.mul_(coef.view(-1, *[1] * (p.dim() - 1)))
    return total > max_norm


def stack_losses(logits: torch.Tensor, y: torch.Tensor, methods: Sequence[Method], sets: Sequence[TrainingSet], cfgs: Sequence[Mapping], done: float) -> torch.Tensor:
    """Each model's training loss, (models,): one cross-entropy over every model without a loss hook, the hooks one by one."""
    losses: list[torch.Tensor | None] = [None] * len(methods)
    plain = [m for m, method in enumerate(methods) if method.loss is None]
    if plain:
        ce = F.cross_entropy(logits[plain].flatten(0, 1), y[plain].flatten(), reduction="none").view(len(plain), -1).mean(1)
        for m, loss in zip(plain, ce):
            losses[m] = loss
    for m, method in enumerate(methods):
        if method.loss is not None:
            losses[m] = method.loss(logits[m].float(), y[m], sets[m].counts, cfgs[m], done)
    return torch.stack(losses)


def attack_stack(
    forward: Callable[..., torch.Tensor], params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, attackers: list[int],
    sets: Sequence[TrainingSet], cfgs: Sequence[Mapping],
) -> tuple[torch.Tensor, torch.Tensor]:
    """AOS for the `attackers` of a stack at a fixed shape: each minority image is replaced with probability p by its
    FGSM example, drawn from each model's generator as fit() draws it; returns (x, the attacked mask (attackers, batch))."""
    draws = torch.stack([torch.rand(y.shape[1], generator=sets[m].gen, device=y.device) < cfgs[m]["p"] for m in attackers])
    minority = torch.stack([sets[m].is_minority for m in attackers])
    mask = minority.gather(1, y[attackers]) & draws
    x = x.clone()
    kinds = [(cfgs[m].get("steps", 1), bool(cfgs[m].get("targeted"))) for m in attackers]  # FGSM steps, targeted
    for steps, targeted in sorted(set(kinds)):  # one fgsm() per attack kind; eps may differ between models
        rows = [i for i, kind in enumerate(kinds) if kind == (steps, targeted)]
        models = [attackers[i] for i in rows]
        sub_params = {k: v.detach()[models] for k, v in params.items()}
        sub_buffers = {k: v[models] for k, v in buffers.items()}
        eps = torch.tensor([float(cfgs[m]["eps"]) for m in models], device=x.device).view(-1, *[1] * (x.dim() - 1))
        majority = ~minority[rows].unsqueeze(1) if targeted else None
        adv = fgsm(lambda z: forward(sub_params, sub_buffers, z), x[models], y[models], eps, steps, majority)
        x[models] = torch.where(mask[rows].view(*mask[rows].shape, *[1] * (x.dim() - 2)), adv, x[models])
    return x, mask


def stacked_forward(models: Sequence[nn.Module]) -> tuple[Callable[..., torch.Tensor], dict, dict]:
    """(forward, params, buffers): forward(params, buffers, x) runs model m on x[m] for every m at once; params and
    buffers are the models' own, stacked along a new dim 0 (the parameters as new leaves, to optimise)."""
    params, buffers = stack_module_state(list(models))
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x,))

    return torch.vmap(one), params, buffers


def stack_batch(x_all: torch.Tensor, y_all: torch.Tensor, idx: torch.Tensor, sets: Sequence[TrainingSet], augment_cfg: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's batches, (models, batch, ...) floats and (models, batch) labels: one gather of rows `idx` of every
    model's images, augmented as bytes with each model's own draws."""
    flip, crop_pad = augment_cfg["flip"], augment_cfg["crop_pad"]
    draws = [augment_draws(idx.shape[1], flip, crop_pad, s.gen) for s in sets]
    mirror = torch.cat([d[0] for d in draws]) if flip else None
    shift = torch.cat([d[1] for d in draws], dim=1) if crop_pad else None
    x = to_input(flip_shift(x_all[idx.flatten()], mirror, shift, crop_pad))
    return x.view(*idx.shape, *x.shape[1:]), y_all[idx]


def record_epoch(stats: list[dict], losses: torch.Tensor, clipped: torch.Tensor, adv: torch.Tensor, attackers: list[int], steps: int, first_step: int, cfg: Mapping) -> float:
    """Each model's epoch into its statistics (losses, logged values; the first divergence as its error) with the
    epoch's host syncs; returns the mean loss over the models."""
    means = (losses.sum(0) / max(1, steps)).tolist()
    counts, adv_counts = clipped.tolist(), dict(zip(attackers, adv.tolist()))
    for m, s in enumerate(stats):
        s["train_steps"] = first_step + steps
        s["losses"].append(losses[:steps, m])
        if s["error"] is None and not math.isfinite(means[m]):
            s["error"] = str(diverged(losses[:, m], first_step, cfg["lr"]))
        if s["error"] is None:  # fit() stops at its divergence: the run logs no epoch after it
            values = {"train_loss": means[m]} | ({"clipped_steps": counts[m]} if cfg["clip_norm"] is not None else {})
            s["epochs"].append(values | ({"adv_images": adv_counts[m]} if m in adv_counts else {}))
    return sum(means) / len(means)


def fit_stack(
    models: Sequence[nn.Module], sets: Sequence[TrainingSet], methods: Sequence[Method], cfg: Mapping,
    method_cfgs: Sequence[Mapping], augment_cfg: Mapping, name: str = "",
) -> list[dict]:
    """Train `models` (one architecture, one device) in place, model m on sets[m] with methods[m], all for the same
    number of steps at one learning rate; returns each model's statistics as fit() does, plus its `epochs` (each
    epoch's logged values) and `error` (the divergence message, or None: a diverged model does not stop the others)."""
    device, n = sets[0].x.device, len(models)
    steps_per_epoch, total = planned_steps(sets[0].n_images, cfg)
    if any(planned_steps(s.n_images, cfg) != (steps_per_epoch, total) for s in sets):
        raise ValueError("fit_stack: every model of a stack must train for the same number of steps")
    forward, params, buffers = stacked_forward(models)
    optimizer = make_optimizer(params.values(), cfg, method_cfgs[0].get("lr_scale", 1.0))  # one lr_scale per stack
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total, cfg["warmup"]))
    offsets = [0, *torch.tensor([len(s.x) for s in sets]).cumsum(0).tolist()[:-1]]  # each model's images in one tensor
    x_all, y_all = torch.cat([s.x for s in sets]), torch.cat([s.y for s in sets])
    positions = [s.positions for s in sets]
    attackers = [m for m, method in enumerate(methods) if method.perturb is not None]
    stats = [{"train_steps": 0, "examples": None, "class_counts": torch.bincount(s.y[s.positions]).tolist(), "losses": [],
              "epochs": [], "error": None} for s in sets]
    step, start = 0, time.perf_counter()
    for epoch in range(cfg["epochs"]):
        for m, method in enumerate(methods):
            if method_cfgs[m].get("redraw") and epoch:
                positions[m] = method.resample(sets[m].y, sets[m].gen)
        batches = [epoch_batches(positions[m] + offsets[m], sets[m].n_images, cfg["batch_size"], sets[m].gen) for m in range(n)]
        losses = torch.zeros(steps_per_epoch, n, device=device)  # on the device: read once an epoch, no sync per step
        clipped = torch.zeros(n, dtype=torch.int64, device=device)
        adv_images = torch.zeros(len(attackers), dtype=torch.int64, device=device)
        held = None  # the epoch's first attacked batch, for attackers still without examples
        for idx in zip(*batches):
            if step == total:
                break
            xb, yb = stack_batch(x_all, y_all, torch.stack(idx), sets, augment_cfg)
            if attackers:
                clean = xb
                with autocast(device, cfg["precision"]):
                    xb, attacked = attack_stack(forward, params, buffers, xb, yb, attackers, sets, method_cfgs)
                adv_images += attacked.sum(1)
                if held is None and any(stats[m]["examples"] is None for m in attackers):
                    held = (clean[attackers], xb[attackers].detach(), yb[attackers], attacked)
            with autocast(device, cfg["precision"]):
                loss = stack_losses(forward(params, buffers, xb), yb, methods, sets, method_cfgs, step / total)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # each model's gradient is its own loss's: the models share no parameter
            if cfg["clip_norm"] is not None:
                clipped += clip_each(list(params.values()), cfg["clip_norm"])
            optimizer.step()
            scheduler.step()
            losses[step - epoch * steps_per_epoch] = loss.detach()
            step += 1
        mean = record_epoch(stats, losses, clipped, adv_images, attackers, step - epoch * steps_per_epoch, epoch * steps_per_epoch, cfg)
        if held is not None:
            keep_examples(stats, attackers, *held)
        log.info(f"{name}: {epoch_line(epoch, cfg['epochs'], mean, step, total, time.perf_counter() - start)} (mean over {n} models)")
        if step == total:
            break
    for s in stats:
        s["losses"] = torch.cat(s["losses"])
    for m, model in enumerate(models):  # the trained weights back into each job's own module
        with torch.no_grad():
            for key, value in model.named_parameters():
                value.copy_(params[key][m])
    return stats


def keep_examples(stats: list[dict], attackers: list[int], clean: torch.Tensor, attacked: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
    """Give each attacker still without examples its first EXAMPLES attacked images of one batch: (clean, attacked, label)."""
    for i, m in enumerate(attackers):
        rows = mask[i].nonzero().flatten()[:EXAMPLES]
        if stats[m]["examples"] is None and len(rows):
            stats[m]["examples"] = (clean[i, rows].float().cpu(), attacked[i, rows].float().cpu(), y[i, rows].cpu())
