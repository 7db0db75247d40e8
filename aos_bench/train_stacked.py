"""Many jobs' models trained as one network: the stacked training core behind `hydra/launcher=stacked`.

One small model keeps a GPU about 1% busy: its step is bound by kernel launches, not arithmetic. fit_stack() trains M
models of one architecture, in one process, as one network: torch.func.vmap turns their convolutions into grouped
ones and their linear layers into batched matmuls, so a step costs about the launches of one model's step.

Each model stays its own job: its own TrainingSet (images, method, positions) and generator, from which it draws
through train.epoch_draws and train.step_draws, the functions fit() draws through, so that its batches,
augmentation and perturb draws are those of its separate job; its own loss, gradient clip and statistics. Only the
float order differs, as it does with another thread count. Differences from fit(), named where they are made:
- A method perturbs through its hook's stacked form (methods.Perturb.stack; a method without one is refused). AOS's
  attacks at a fixed shape: every row of the batch goes through FGSM and the drawn mask picks the rows that change,
  with no host sync per batch (fit() attacks the picked rows only: on the CPU that costs less arithmetic).
- The images for adversarial_examples.png come from the first batch of the first epoch whose first batch had an
  attacked image, looked at once an epoch (fit() takes the first batch with one, looking at every step: the same
  batch, unless the first held no attacked minority image).
- Models must be free of BatchNorm and dropout (checks.stack_problem): under one fixed-shape attack, BatchNorm's batch
  statistics would be those of the whole batch, not of the attacked rows, and dropout's draws are not per job.
- No checkpoint: a stack trains from its first step to its last (checks.stack_problem refuses tracking.checkpoint_dir).
"""

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from aos_bench.errors import UsageError
from aos_bench.train import (
    EXAMPLES,
    Recipe,
    RunStats,
    StepDraws,
    TrainingSet,
    autocast,
    diverged,
    end_epoch,
    epoch_draws,
    epoch_line,
    flip_shift,
    make_optimizer,
    make_scheduler,
    new_stats,
    planned_steps,
    step_draws,
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


def stack_losses(logits: torch.Tensor, y: torch.Tensor, sets: Sequence[TrainingSet], done: float) -> torch.Tensor:
    """Each model's training loss, (models,): one cross-entropy over every model without a loss hook, the hooks one by one."""
    losses: list[torch.Tensor | None] = [None] * len(sets)
    plain = [m for m, s in enumerate(sets) if s.method.loss is None]
    if plain:
        ce = F.cross_entropy(logits[plain].flatten(0, 1), y[plain].flatten(), reduction="none").view(len(plain), -1).mean(1)
        for m, loss in zip(plain, ce, strict=True):
            losses[m] = loss
    for m, s in enumerate(sets):
        if s.method.loss is not None:
            losses[m] = s.method.loss(logits[m].float(), y[m], s.counts, s.method_cfg, done)
    return torch.stack(losses)


def perturb_stack(
    forward: Callable[..., torch.Tensor], params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, attackers: list[int],
    sets: Sequence[TrainingSet], draws: Sequence[StepDraws],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batches of the `attackers` of a stack through their methods' stacked perturb forms, one call per form with
    its models' draws; returns (x, the perturbed mask (attackers, batch))."""
    masks = {}
    for form in dict.fromkeys(sets[m].method.perturb.stack for m in attackers):  # each form once, in order
        models = [m for m in attackers if sets[m].method.perturb.stack is form]
        is_minority = torch.stack([sets[m].is_minority for m in models])
        picked = torch.stack([draws[m].perturb for m in models])
        x, mask = form(forward, params, buffers, x, y, models, is_minority, [sets[m].method_cfg for m in models], picked)
        masks |= dict(zip(models, mask, strict=True))
    return x, torch.stack([masks[m] for m in attackers])


def stacked_forward(models: Sequence[nn.Module]) -> tuple[Callable[..., torch.Tensor], dict, dict]:
    """(forward, params, buffers): forward(params, buffers, x) runs model m on x[m] for every m at once; params and
    buffers are the models' own, stacked along a new dim 0 (the parameters as new leaves, to optimise)."""
    params, buffers = stack_module_state(list(models))
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x,))

    return torch.vmap(one), params, buffers


def stack_batch(
    x_all: torch.Tensor, y_all: torch.Tensor, idx: torch.Tensor, draws: Sequence[StepDraws], recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's batches, (models, batch, ...) floats and (models, batch) labels: one gather of rows `idx` of every
    model's images, augmented as bytes with each model's own draws."""
    mirror = torch.cat([d.mirror for d in draws]) if draws[0].mirror is not None else None
    shift = torch.cat([d.shift for d in draws], dim=1) if draws[0].shift is not None else None
    x = to_input(flip_shift(x_all[idx.flatten()], mirror, shift, recipe.crop_pad, recipe.pad))
    return x.view(*idx.shape, *x.shape[1:]), y_all[idx]


def record_epoch(
    stats: list[RunStats], losses: torch.Tensor, clipped: torch.Tensor, adv: torch.Tensor, attackers: list[int], steps: int,
    first_step: int, recipe: Recipe,
) -> float:
    """Each model's epoch into its statistics (losses, logged values; the first divergence as its error) with the
    epoch's host syncs; returns the mean loss over the models."""
    means = (losses.sum(0) / max(1, steps)).tolist()
    counts, adv_counts = clipped.tolist(), dict(zip(attackers, adv.tolist(), strict=True))
    for m, s in enumerate(stats):
        if s.error is None and not math.isfinite(means[m]):
            s.error = str(diverged(losses[:, m], first_step, recipe.lr))
        values = None  # fit() stops at its divergence: the run logs no epoch after it
        if s.error is None:
            values = {"train_loss": means[m]} | ({"clipped_steps": counts[m]} if recipe.clip_norm is not None else {})
            values |= {"adv_images": adv_counts[m]} if m in adv_counts else {}
        end_epoch(s, losses[:, m], steps, values)
    return sum(means) / len(means)


def fit_stack(models: Sequence[nn.Module], sets: Sequence[TrainingSet], recipe: Recipe, name: str = "") -> list[RunStats]:
    """Train `models` (one architecture, one device) in place, model m on sets[m] with its method, all for the same
    number of steps by one recipe; returns each model's statistics as fit() does, with its `error` (the divergence
    message, or None: a diverged model does not stop the others)."""
    for s in sets:
        if s.method.perturb is not None and s.method.perturb.stack is None:
            raise UsageError(f"method.name={s.method_cfg['name']}: hydra/launcher=stacked has no stacked form of its perturb hook;"
                             " run it with the basic or joblib launcher")
    device, n = sets[0].x.device, len(models)
    steps_per_epoch, total = planned_steps(sets[0].n_images, recipe)
    if any(planned_steps(s.n_images, recipe) != (steps_per_epoch, total) for s in sets):
        raise ValueError("fit_stack: every model of a stack must train for the same number of steps")
    forward, params, buffers = stacked_forward(models)
    optimizer = make_optimizer(params.values(), recipe)  # one lr_scale per stack
    scheduler = make_scheduler(optimizer, recipe, total, steps_per_epoch)
    offsets = [0, *torch.tensor([len(s.x) for s in sets]).cumsum(0).tolist()[:-1]]  # each model's images in one tensor
    x_all, y_all = torch.cat([s.x for s in sets]), torch.cat([s.y for s in sets])
    positions = [s.positions for s in sets]
    attackers = [m for m, s in enumerate(sets) if s.method.perturb is not None]
    stats = [new_stats(s) for s in sets]
    step, start = 0, time.perf_counter()
    for epoch in range(recipe.epochs):
        batches = []
        for m, s in enumerate(sets):
            positions[m], drawn = epoch_draws(s, positions[m], epoch, recipe)
            batches.append([b + offsets[m] for b in drawn])
        losses = torch.zeros(steps_per_epoch, n, device=device)  # on the device: read once an epoch, no sync per step
        clipped = torch.zeros(n, dtype=torch.int64, device=device)
        adv_images = torch.zeros(len(attackers), dtype=torch.int64, device=device)
        held = None  # the epoch's first attacked batch, for attackers still without examples
        for idx in zip(*batches, strict=True):
            if step == total:
                break
            draws = [step_draws(s, len(i), recipe) for s, i in zip(sets, idx, strict=True)]
            xb, yb = stack_batch(x_all, y_all, torch.stack(idx), draws, recipe)
            if attackers:
                clean = xb
                with autocast(device, recipe.precision):
                    xb, attacked = perturb_stack(forward, params, buffers, xb, yb, attackers, sets, draws)
                adv_images += attacked.sum(1)
                if held is None and any(stats[m].examples is None for m in attackers):
                    held = (clean[attackers], xb[attackers].detach(), yb[attackers], attacked)
            with autocast(device, recipe.precision):
                loss = stack_losses(forward(params, buffers, xb), yb, sets, step / total)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # each model's gradient is its own loss's: the models share no parameter
            if recipe.clip_norm is not None:
                clipped += clip_each(list(params.values()), recipe.clip_norm)
            optimizer.step()
            scheduler.step()
            losses[step - epoch * steps_per_epoch] = loss.detach()
            step += 1
        mean = record_epoch(stats, losses, clipped, adv_images, attackers, step - epoch * steps_per_epoch, epoch * steps_per_epoch, recipe)
        if held is not None:
            keep_examples(stats, attackers, *held)
        log.info(f"{name}: {epoch_line(epoch, recipe.epochs, mean, step, total, time.perf_counter() - start)} (mean over {n} models)")
        if step == total:
            break
    for m, model in enumerate(models):  # the trained weights back into each job's own module
        with torch.no_grad():
            for key, value in model.named_parameters():
                value.copy_(params[key][m])
    return stats


def keep_examples(
    stats: list[RunStats], attackers: list[int], clean: torch.Tensor, attacked: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
) -> None:
    """Give each attacker still without examples its first EXAMPLES attacked images of one batch: (clean, attacked, label)."""
    for i, m in enumerate(attackers):
        rows = mask[i].nonzero().flatten()[:EXAMPLES]
        if stats[m].examples is None and len(rows):
            stats[m].examples = (clean[i, rows].float().cpu(), attacked[i, rows].float().cpu(), y[i, rows].cpu())
