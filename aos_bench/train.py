"""The training core: data held on the device as uint8 tensors, batches as index slices of on-device permutations.

fit() trains one model with one method; predict() labels a test set. No DataLoader, no worker processes: every
image is already on the device, so a batch costs one gather, one conversion to float and the model itself.
"""

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from aos_bench.errors import Diverged, UsageError
from aos_bench.methods import Method
from aos_bench.progress import duration

EXAMPLES = 8  # minority images kept (original and attacked) for adversarial_examples.png
log = logging.getLogger(__name__)


def resolve_precision(device: torch.device, precision: str) -> str:
    """`train.precision` on `device`: auto = bf16 on CUDA, fp32 on the CPU."""
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (auto) or when asked (bf16: about 2x faster convolutions on CPUs with AMX), else fp32."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to [0, 1] floats in channels_last order (faster convolutions on CUDA and on the CPU alike)."""
    return x.contiguous(memory_format=torch.channels_last).float().div_(255)  # reordered as bytes, 4x less to move


def epoch_images(labels: torch.Tensor, positions: torch.Tensor, epoch_size: str) -> int:
    """Images per epoch: N x largest class (balanced: equal steps for every method), one pass over the method's set
    (method), or the training set's size (dataset: equal steps too, as many as a pass over the imbalanced set)."""
    if epoch_size == "balanced":
        return int(torch.bincount(labels).max()) * int(labels.max() + 1)
    if epoch_size == "dataset":
        return len(labels)
    return len(positions)


def epoch_order(positions: torch.Tensor, n_images: int, gen: torch.Generator) -> torch.Tensor:
    """`n_images` entries of `positions`, in passes reshuffled each time (a smaller set is cycled)."""
    passes = math.ceil(n_images / len(positions))
    perms = [positions[torch.randperm(len(positions), generator=gen, device=gen.device)] for _ in range(passes)]
    return torch.cat(perms)[:n_images]


def epoch_batches(positions: torch.Tensor, n_images: int, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One epoch's batches: index tensors of `batch_size` entries of epoch_order (the last may be shorter)."""
    return epoch_order(positions, n_images, gen).split(batch_size)


def augment_draws(n: int, flip: bool, crop_pad: int, gen: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The random part of the augmentation of `n` images: which to mirror (n, 1), and the (dy, dx) shifts (2, n, 1)."""
    mirror = (torch.rand(n, generator=gen, device=gen.device) < 0.5).view(n, 1) if flip else None
    shift = torch.randint(2 * crop_pad + 1, (2, n, 1), generator=gen, device=gen.device) if crop_pad else None
    return mirror, shift


def flip_shift(x: torch.Tensor, mirror: torch.Tensor | None, shift: torch.Tensor | None, crop_pad: int, pad: str = "reflect") -> torch.Tensor:
    """Mirror the images `mirror` marks and translate each by its `shift` within a padding of crop_pad pixels: the
    image reflected (reflect), or black (zeros: a random crop of the zero-padded image, as torchvision's RandomCrop)."""
    n, c, h, w = x.shape
    cols = torch.arange(w, device=x.device).expand(n, w)
    if mirror is not None:
        cols = torch.where(mirror, w - 1 - cols, cols)  # a mirrored image reads its columns right to left
    if shift is not None:
        x = F.pad(x, (crop_pad,) * 4, mode="reflect") if pad == "reflect" else F.pad(x, (crop_pad,) * 4)
        dy, dx = shift
        rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        x = x.gather(2, rows.expand(n, c, h, w + 2 * crop_pad))
        cols = cols + (torch.where(mirror, 2 * crop_pad - dx, dx) if mirror is not None else dx)  # either padding is mirror-symmetric
    if mirror is not None or shift is not None:
        x = x.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))  # flip and horizontal shift in one pass
    return x


def schedule(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over a `warmup` fraction of the steps, then linear decay to 0."""
    warm = max(1, round(warmup * total_steps))
    return lambda t: (t + 1) / warm if t < warm else max(0.0, (total_steps - t) / max(1, total_steps - warm))


def step_schedule(steps_per_epoch: int, warmup_epochs: int, milestones: tuple[int, ...], lr_decay: float) -> Callable[[int], float]:
    """Learning-rate factor by epoch (Cao et al.'s): epoch e (from 0) of the first warmup_epochs at (e + 1) / warmup_epochs,
    then lr_decay to the power of the milestones reached (an epoch >= a milestone has reached it)."""

    def factor(t: int) -> float:
        epoch = t // steps_per_epoch
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        return lr_decay ** sum(epoch >= m for m in milestones)

    return factor


@dataclass(frozen=True)
class Recipe:
    """What fit() and fit_stack() train by, read once from a job's config (recipe_of): its train settings, the method's
    lr_scale and the dataset's augmentation. A stack shares one (aos_bench.launch_stacked groups jobs by these values)."""

    batch_size: int  # images per optimizer step
    epochs: int  # passes of epoch_size images
    max_steps: int | None  # cap on the optimizer steps in all; None = epochs x steps per epoch
    lr: float  # the recipe's peak SGD learning rate (before lr_scale)
    momentum: float  # SGD momentum (Nesterov's unless nesterov is false)
    weight_decay: float  # L2 penalty on all parameters
    warmup: float  # fraction of all steps spent warming up
    clip_norm: float | None  # the gradient's largest global L2 norm; None = no clipping
    precision: str  # auto | fp32 | bf16 (see resolve_precision)
    compile: bool  # torch.compile the model
    epoch_size: str  # balanced = N x largest class images an epoch | method = one pass over the method's set
    lr_scale: float = 1.0  # the method's factor on lr (conf/method/reweight.yaml); 1 = the recipe's lr
    flip: bool = False  # mirror each image with probability 1/2
    crop_pad: int = 0  # translate each image by up to this many pixels
    pad: str = "reflect"  # the translation's padding: reflect | zeros
    # recipe=lt's keys (conf/recipe_dataset/lt_*.yaml); the defaults are what every other recipe trains by
    schedule: str = "linear"  # linear: schedule() | step: step_schedule()
    warmup_epochs: int = 0  # step: epochs of linear warm-up
    milestones: tuple[int, ...] = ()  # step: epochs (from 0) from which the lr is multiplied by lr_decay once more
    lr_decay: float = 1.0  # step: the factor per milestone
    nesterov: bool = True  # Nesterov momentum; false = plain momentum


def recipe_of(cfg: Mapping) -> Recipe:
    """The Recipe of a job's config: its `train` keys, `method.lr_scale` (1 when absent) and `dataset.augment`; keys
    that only recipe=lt sets are absent elsewhere (checks.OPTIONAL_TRAIN) and take the Recipe's defaults."""
    train, augment = cfg["train"], cfg["dataset"]["augment"]
    return Recipe(
        batch_size=train["batch_size"], epochs=train["epochs"], max_steps=train["max_steps"], lr=train["lr"],
        momentum=train["momentum"], weight_decay=train["weight_decay"], warmup=train["warmup"], clip_norm=train["clip_norm"],
        precision=train["precision"], compile=train["compile"], epoch_size=train["epoch_size"],
        lr_scale=cfg["method"].get("lr_scale", 1.0), flip=augment["flip"], crop_pad=augment["crop_pad"],
        pad=augment.get("pad", "reflect"), schedule=train.get("schedule", "linear"), warmup_epochs=train.get("warmup_epochs", 0),
        milestones=tuple(train.get("milestones") or ()), lr_decay=train.get("lr_decay", 1.0), nesterov=train.get("nesterov", True),
    )


def make_optimizer(params: Iterable[torch.Tensor], recipe: Recipe) -> torch.optim.SGD:
    """SGD (Nesterov's unless the recipe says not) with the recipe's peak learning rate (times its lr_scale), momentum
    and weight decay."""
    lr = recipe.lr * recipe.lr_scale
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total: int, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate over the run's `total` optimizer steps: schedule()'s warm-up and linear decay, or
    step_schedule()'s warm-up epochs and milestones (recipe=lt)."""
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, step_schedule(steps_per_epoch, recipe.warmup_epochs, recipe.milestones, recipe.lr_decay))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total, recipe.warmup))


@dataclass(frozen=True)
class TrainingSet:
    """What one model trains on, drawn before its first step: the method (and its config) it trains with, the method's
    images and labels (SMOTE adds some), their class sizes, the minority mask, the epoch's positions into them, the
    images per epoch and the run's generator (every random draw of training but the model's own, e.g. dropout)."""

    method: Method
    method_cfg: Mapping
    x: torch.Tensor
    y: torch.Tensor
    counts: torch.Tensor  # the training set's class sizes, which loss-based methods weigh by
    is_minority: torch.Tensor
    positions: torch.Tensor
    n_images: int
    gen: torch.Generator


def training_set(
    x: torch.Tensor, y: torch.Tensor, method: Method, method_cfg: Mapping, minority_classes: list[int], seed: int, epoch_size: str
) -> TrainingSet:
    """The TrainingSet of uint8 images `x` with labels `y` under `method`; the generator, seeded with `seed`, has drawn the positions."""
    gen = torch.Generator(x.device).manual_seed(seed)
    if method.synthesize is not None:
        x, y = method.synthesize(x, y, method_cfg, seed)
    is_minority = torch.zeros(int(y.max()) + 1, dtype=torch.bool, device=x.device)
    is_minority[minority_classes] = True
    positions = method.resample(y, gen)
    return TrainingSet(method, method_cfg, x, y, torch.bincount(y), is_minority, positions, epoch_images(y, positions, epoch_size), gen)


def planned_steps(n_images: int, recipe: Recipe) -> tuple[int, int]:
    """(steps per epoch, steps in all) for `n_images` an epoch under the recipe (its max_steps caps the total)."""
    steps_per_epoch = math.ceil(n_images / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    return steps_per_epoch, total if recipe.max_steps is None else min(total, recipe.max_steps)


# The random draws of training, each from the model's own generator, in this order (fit() and fit_stack() both draw
# through epoch_draws and step_draws, so that a stacked model's draws are those of its separate job):
# 1. an epoch: the method's resample (at redraw, from the second epoch on), then the order of the epoch's images;
# 2. a step: the augmentation's mirror and shift, then the method's perturb draws.
def epoch_draws(ts: TrainingSet, positions: torch.Tensor, epoch: int, recipe: Recipe) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """An epoch's draws: (the positions it runs over, a redraw's or `positions`, and its batches of positions)."""
    if ts.method_cfg.get("redraw") and epoch:
        positions = ts.method.resample(ts.y, ts.gen)
    return positions, epoch_batches(positions, ts.n_images, recipe.batch_size, ts.gen)


@dataclass(frozen=True)
class StepDraws:
    """A step's draws for its batch: which images to mirror (n, 1), their (dy, dx) shifts (2, n, 1), the perturb hook's."""

    mirror: torch.Tensor | None
    shift: torch.Tensor | None
    perturb: torch.Tensor | None


def step_draws(ts: TrainingSet, n: int, recipe: Recipe) -> StepDraws:
    """A step's draws for a batch of n images: the augmentation's, then the method's perturb hook's (where it has one)."""
    mirror, shift = augment_draws(n, recipe.flip, recipe.crop_pad, ts.gen)
    perturb = ts.method.perturb.draw(n, ts.method_cfg, ts.gen) if ts.method.perturb is not None else None
    return StepDraws(mirror, shift, perturb)


@dataclass
class RunStats:
    """A training run's statistics, filled epoch by epoch (fit() one, fit_stack() one per model); aos_bench.job and
    aos_bench.launch_stacked log them."""

    class_counts: list[int]  # images per class of the method's set (the first epoch's positions)
    losses: torch.Tensor  # every step's training loss, on the training device
    train_steps: int = 0  # optimizer steps taken
    epochs: list[dict[str, float]] = field(default_factory=list)  # each epoch's logged values (train_loss, ...)
    examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (clean, attacked, label) for adversarial_examples.png
    error: str | None = None  # fit_stack(): the model's divergence message (fit() raises Diverged instead)
    resumed_epochs: int = 0  # epochs that a stopped run trained before this one resumed from its checkpoint


def new_stats(ts: TrainingSet) -> RunStats:
    """The statistics of a run on `ts` before its first step."""
    return RunStats(torch.bincount(ts.y[ts.positions]).tolist(), torch.zeros(0, device=ts.x.device))


def end_epoch(stats: RunStats, losses: torch.Tensor, steps: int, values: dict[str, float] | None) -> None:
    """An epoch of `steps` steps (their `losses`) into `stats`, with its logged `values` (None: not logged)."""
    stats.train_steps += steps
    stats.losses = torch.cat([stats.losses, losses[:steps]])
    if values is not None:
        stats.epochs.append(values)


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save `state` to `path` atomically: a temporary file beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def run_state(epoch: int, positions: torch.Tensor, total: int, model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator, stats: RunStats) -> dict:
    """Everything fit() needs to go on after `epoch` (counted from 0): the next epoch, the positions, the planned
    steps, the model, optimizer and scheduler states, the random generators' states and the statistics so far."""
    cuda = gen.device.type == "cuda"
    return {
        "epoch": epoch + 1, "total": total, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "positions": positions,  # the epoch's: a redraw's, else the method's first draw (training_set's, drawn again on resume)
        "scheduler": scheduler.state_dict(), "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),  # the global generators: a model's own draws (dropout) come from them
        "cuda_rng": torch.cuda.get_rng_state(gen.device) if cuda else None,
        "stats": {f.name: getattr(stats, f.name) for f in fields(stats)},
    }


def resume(path: Path, total: int, model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator) -> tuple[int, torch.Tensor, RunStats]:
    """Load run_state's file at `path` into the model, optimizer, scheduler and generators; (next epoch, positions, statistics)."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # the states load onto their tensors' devices
    if state["total"] != total:
        raise UsageError(f"{path}: a checkpoint of a run of {state['total']} steps, not {total}; delete it to train from the start")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], gen.device)
    stats = RunStats(**state["stats"] | {"losses": state["stats"]["losses"].to(gen.device), "resumed_epochs": state["epoch"]})
    log.info("resumed from %s: %d epochs done", path, state["epoch"])
    return state["epoch"], state["positions"].to(gen.device), stats


def fit(
    model: nn.Module,
    ts: TrainingSet,
    recipe: Recipe,
    on_epoch: Callable[[int, dict], None] = lambda epoch, values: None,
    progress: bool = False,
    name: str = "",
    checkpoint: Path | None = None,
) -> RunStats:
    """Train `model` in place on `ts` (on the training device) by `recipe`; returns the run's statistics. Without a
    progress bar, each epoch logs a line that starts with `name` (the run's: parallel jobs share one log). With a
    `checkpoint` path, the run's state is saved there after each epoch but the last, training resumes from it when
    it is there, and it is removed when training ends."""
    device, x, y, method = ts.x.device, ts.x, ts.y, ts.method
    forward = torch.compile(model) if recipe.compile else model  # the attack keeps the eager model
    steps_per_epoch, total = planned_steps(ts.n_images, recipe)
    optimizer = make_optimizer(model.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe, total, steps_per_epoch)
    first, positions, stats = 0, ts.positions, new_stats(ts)
    if checkpoint is not None and checkpoint.exists():
        first, positions, stats = resume(checkpoint, total, model, optimizer, scheduler, ts.gen)
    epochs = tqdm(range(first, recipe.epochs), desc="epochs", disable=not progress, leave=False)
    start, steps_before = time.perf_counter(), stats.train_steps
    for epoch in epochs:
        positions, batches = epoch_draws(ts, positions, epoch, recipe)
        losses = torch.zeros(steps_per_epoch, device=device)  # on the device: checked once an epoch, no sync per step
        clipped = torch.zeros((), dtype=torch.int64, device=device)
        adv_images, step = 0, 0  # step: within the epoch
        model.train()
        for idx in batches:
            if stats.train_steps + step == total:
                break
            draws = step_draws(ts, len(idx), recipe)
            xb, yb = to_input(flip_shift(x[idx], draws.mirror, draws.shift, recipe.crop_pad, recipe.pad)), y[idx]  # augmented as bytes
            if method.perturb is not None:
                clean = xb
                with autocast(device, recipe.precision):
                    xb, attacked = method.perturb.batch(model, xb, yb, ts.is_minority, ts.method_cfg, draws.perturb)
                adv_images += len(attacked)
                if stats.examples is None and len(attacked):
                    keep = attacked[:EXAMPLES]
                    stats.examples = (clean[keep].float().cpu(), xb[keep].float().cpu(), yb[keep].cpu())
            with autocast(device, recipe.precision):
                logits = forward(xb)
                if method.loss is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    loss = method.loss(logits.float(), yb, ts.counts, ts.method_cfg, (stats.train_steps + step) / total)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip_norm is not None:
                clipped += nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm) > recipe.clip_norm
            optimizer.step()
            scheduler.step()
            losses[step] = loss.detach()
            step += 1
        values = {"train_loss": losses.sum().item() / max(1, step)}  # the epoch's one host sync
        if not math.isfinite(values["train_loss"]):
            raise diverged(losses, epoch * steps_per_epoch, recipe.lr)
        if recipe.clip_norm is not None:
            values["clipped_steps"] = clipped.item()  # steps whose gradient was rescaled
        if method.perturb is not None:
            values["adv_images"] = adv_images
        end_epoch(stats, losses, step, values)
        epochs.set_postfix(loss=f"{values['train_loss']:.3f}")
        on_epoch(epoch, values)
        if not progress:  # no bar (a multirun, no terminal): one line per epoch instead
            line = epoch_line(epoch, recipe.epochs, values["train_loss"], stats.train_steps - steps_before, total - steps_before,
                              time.perf_counter() - start)
            log.info(f"{name}: {line}" if name else line)
        if stats.train_steps == total:
            break
        if checkpoint is not None:  # after on_epoch: an epoch saved has been logged
            save_checkpoint(checkpoint, run_state(epoch, positions, total, model, optimizer, scheduler, ts.gen, stats))
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return stats


def epoch_line(epoch: int, epochs: int, loss: float, steps: int, total: int, seconds: float) -> str:
    """`epoch 3/40 loss 0.412 12.3 steps/s ETA 4m10s`: where a run without a progress bar stands."""
    rate = steps / max(seconds, 1e-9)
    eta = (total - steps) / rate if rate else 0
    return f"epoch {epoch + 1}/{epochs} loss {loss:.3f} {rate:.1f} steps/s ETA {duration(eta)}"


def diverged(losses: torch.Tensor, first_step: int, lr: float) -> Diverged:
    """The error for an epoch whose `losses` hold a NaN or infinity, naming the first such step (counted from 1)."""
    bad = int(torch.nonzero(~torch.isfinite(losses.cumsum(0)))[0])  # a NaN, an infinity, or finite ones summing past the range
    return Diverged(f"the training loss is {losses[bad].item()} at step {first_step + bad + 1}; lower train.lr (now {lr:g})")


@torch.inference_mode()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int,
    precision: str = "auto",
    adjust: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Predicted labels of uint8 images `x` (on the model's device): argmax of the logits, or of adjust(logits)."""
    scores = adjust or (lambda logits: logits)
    model.eval()
    with autocast(x.device, precision):
        return torch.cat([scores(model(to_input(x[i : i + batch_size]))).argmax(1) for i in range(0, len(x), batch_size)])
