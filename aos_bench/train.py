"""The training core: data held on the device as uint8 tensors, batches as index slices of on-device permutations.

fit() trains one model with one method; predict() labels a test set. No DataLoader, no worker processes: every
image is already on the device, so a batch costs one gather, one conversion to float and the model itself.
"""

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from aos_bench.errors import Diverged
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
    """Images per epoch: N x largest class (balanced: equal steps for every method) or one pass over the method's set."""
    if epoch_size == "balanced":
        return int(torch.bincount(labels).max()) * int(labels.max() + 1)
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
    """The random part of augment() for `n` images: which to mirror (n, 1), and the (dy, dx) shifts (2, n, 1)."""
    mirror = (torch.rand(n, generator=gen, device=gen.device) < 0.5).view(n, 1) if flip else None
    shift = torch.randint(2 * crop_pad + 1, (2, n, 1), generator=gen, device=gen.device) if crop_pad else None
    return mirror, shift


def flip_shift(x: torch.Tensor, mirror: torch.Tensor | None, shift: torch.Tensor | None, crop_pad: int) -> torch.Tensor:
    """Mirror the images `mirror` marks and translate each by its `shift` within reflect padding of crop_pad pixels."""
    n, c, h, w = x.shape
    cols = torch.arange(w, device=x.device).expand(n, w)
    if mirror is not None:
        cols = torch.where(mirror, w - 1 - cols, cols)  # a mirrored image reads its columns right to left
    if shift is not None:
        x = F.pad(x, (crop_pad,) * 4, mode="reflect")
        dy, dx = shift
        rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        x = x.gather(2, rows.expand(n, c, h, w + 2 * crop_pad))
        cols = cols + (torch.where(mirror, 2 * crop_pad - dx, dx) if mirror is not None else dx)  # reflect padding is mirror-symmetric
    if mirror is not None or shift is not None:
        x = x.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))  # flip and horizontal shift in one pass
    return x


def augment(x: torch.Tensor, flip: bool, crop_pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations by up to crop_pad pixels (reflect padding), per image, of any dtype."""
    return flip_shift(x, *augment_draws(len(x), flip, crop_pad, gen), crop_pad)


def schedule(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over a `warmup` fraction of the steps, then linear decay to 0."""
    warm = max(1, round(warmup * total_steps))
    return lambda t: (t + 1) / warm if t < warm else max(0.0, (total_steps - t) / max(1, total_steps - warm))


def make_optimizer(params: Iterable[torch.Tensor], cfg: Mapping, lr_scale: float = 1.0) -> torch.optim.SGD:
    """Nesterov SGD with the recipe's peak learning rate (times a method's lr_scale), momentum and weight decay."""
    lr = cfg["lr"] * lr_scale
    return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], nesterov=True, weight_decay=cfg["weight_decay"])


@dataclass(frozen=True)
class TrainingSet:
    """What one model trains on, drawn before its first step: the method's images and labels (SMOTE adds some), their
    class sizes, the minority mask, the epoch's positions into them, the images per epoch and the run's generator."""

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
    return TrainingSet(x, y, torch.bincount(y), is_minority, positions, epoch_images(y, positions, epoch_size), gen)


def planned_steps(n_images: int, cfg: Mapping) -> tuple[int, int]:
    """(steps per epoch, steps in all) for `n_images` an epoch under the train config (train.max_steps caps the total)."""
    steps_per_epoch = math.ceil(n_images / cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    return steps_per_epoch, total if cfg["max_steps"] is None else min(total, cfg["max_steps"])


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: Method,
    cfg: Mapping,
    method_cfg: Mapping,
    augment_cfg: Mapping,
    minority_classes: list[int],
    seed: int,
    on_epoch: Callable[[int, dict], None] = lambda epoch, stats: None,
    progress: bool = False,
    name: str = "",
) -> dict:
    """Train `model` in place on uint8 images `x` (on the training device) with labels `y`; returns the run's statistics.
    Without a progress bar, each epoch logs a line that starts with `name` (the run's: parallel jobs share one log)."""
    device = x.device
    ts = training_set(x, y, method, method_cfg, minority_classes, seed, cfg["epoch_size"])
    x, y, gen, positions, n_images = ts.x, ts.y, ts.gen, ts.positions, ts.n_images
    forward = torch.compile(model) if cfg["compile"] else model  # the attack keeps the eager model
    steps_per_epoch, total = planned_steps(n_images, cfg)
    optimizer = make_optimizer(model.parameters(), cfg, method_cfg.get("lr_scale", 1.0))  # a per-method setting: conf/method/reweight.yaml
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total, cfg["warmup"]))
    stats: dict = {"train_steps": 0, "examples": None, "class_counts": torch.bincount(y[positions]).tolist(), "losses": []}
    epochs = tqdm(range(cfg["epochs"]), desc="epochs", disable=not progress, leave=False)
    start = time.perf_counter()
    for epoch in epochs:
        if method_cfg.get("redraw") and epoch:
            positions = method.resample(y, gen)
        losses = torch.zeros(steps_per_epoch, device=device)  # on the device: checked once an epoch, no sync per step
        clipped = torch.zeros((), dtype=torch.int64, device=device)
        adv_images = 0
        model.train()
        for idx in epoch_batches(positions, n_images, cfg["batch_size"], gen):
            if stats["train_steps"] == total:
                break
            xb, yb = to_input(augment(x[idx], augment_cfg["flip"], augment_cfg["crop_pad"], gen)), y[idx]  # augmented as bytes
            if method.perturb is not None:
                clean = xb
                with autocast(device, cfg["precision"]):
                    xb, attacked = method.perturb(model, xb, yb, ts.is_minority, method_cfg, gen)
                adv_images += len(attacked)
                if stats["examples"] is None and len(attacked):
                    keep = attacked[:EXAMPLES]
                    stats["examples"] = (clean[keep].float().cpu(), xb[keep].float().cpu(), yb[keep].cpu())
            with autocast(device, cfg["precision"]):
                logits = forward(xb)
                if method.loss is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    loss = method.loss(logits.float(), yb, ts.counts, method_cfg, stats["train_steps"] / total)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["clip_norm"] is not None:
                clipped += nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_norm"]) > cfg["clip_norm"]
            optimizer.step()
            scheduler.step()
            losses[stats["train_steps"] - epoch * steps_per_epoch] = loss.detach()
            stats["train_steps"] += 1
        steps = stats["train_steps"] - epoch * steps_per_epoch
        stats["losses"].append(losses[:steps])
        epoch_stats = {"train_loss": losses.sum().item() / max(1, steps)}  # the epoch's one host sync
        if not math.isfinite(epoch_stats["train_loss"]):
            raise diverged(losses, epoch * steps_per_epoch, cfg["lr"])
        if cfg["clip_norm"] is not None:
            epoch_stats["clipped_steps"] = clipped.item()  # steps whose gradient was rescaled
        if method.perturb is not None:
            epoch_stats["adv_images"] = adv_images
        epochs.set_postfix(loss=f"{epoch_stats['train_loss']:.3f}")
        on_epoch(epoch, epoch_stats)
        if not progress:  # no bar (a multirun, no terminal): one line per epoch instead
            line = epoch_line(epoch, cfg["epochs"], epoch_stats["train_loss"], stats["train_steps"], total, time.perf_counter() - start)
            log.info(f"{name}: {line}" if name else line)
        if stats["train_steps"] == total:
            break
    stats["losses"] = torch.cat(stats["losses"])  # every step's training loss, on the device
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
