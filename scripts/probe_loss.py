"""Per-step statistics of one run of a loss-based method (reweight, focal, ldam_drw, balanced_softmax): where and how
its training fails. It runs the job as `python -m aos_bench` would (the run is logged to MLflow as usual), records at
every optimizer step the batch loss, the batch's minority images, how many classes the model predicts on the batch
and its largest |logit|, and prints them in windows of steps.

    python scripts/probe_loss.py method=reweight +row=mnist_step_mu0.9 recipe=paper seed=0 [--json steps.json]

A model that predicts one class on every batch with its logits near zero has stopped learning (its ReLUs are dead):
results/README.md (Methods) reads re-weighting's collapse from these lines.
"""

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from aos_bench import job, methods
from aos_bench.errors import Diverged
from aos_bench.paths import CONFIG_DIR

WINDOWS = 16  # lines printed: the run's steps in this many equal windows


def recording(loss: Callable, steps: list[dict]) -> Callable:
    """`loss`, appending each step's statistics to `steps`."""

    def recorded(logits: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, cfg: dict, done: float) -> torch.Tensor:
        value = loss(logits, y, counts, cfg, done)
        predicted = logits.argmax(1)
        steps.append({
            "loss": value.item(),
            "minority_images": int((counts[y] < counts.max()).sum()),  # of a class under the largest
            "classes_predicted": int(predicted.unique().numel()),
            "max_abs_logit": logits.abs().max().item(),
        })
        return value

    return recorded


def windows(steps: list[dict]) -> list[str]:
    """One line per window of steps: mean and largest loss, mean minority images, classes predicted, largest |logit|."""
    size = max(1, len(steps) // WINDOWS)
    lines = ["steps | mean loss | max loss | minority images / batch | classes predicted | max abs logit"]
    for start in range(0, len(steps), size):
        part = steps[start : start + size]
        lines.append(
            f"{start + 1}-{start + len(part)} | {statistics.mean(s['loss'] for s in part):.3f} | {max(s['loss'] for s in part):.2f} | "
            f"{statistics.mean(s['minority_images'] for s in part):.1f} | {statistics.mean(s['classes_predicted'] for s in part):.1f} | "
            f"{max(s['max_abs_logit'] for s in part):.1f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="+", help="the job's overrides, as for python -m aos_bench")
    parser.add_argument("--json", type=Path, help="also write every step's statistics to this file")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    method = methods.get_method(cfg.method.name)
    if method.loss is None:
        parser.error(f"method.name={cfg.method.name} trains with plain cross-entropy; a loss-based method is probed")
    steps: list[dict] = []
    methods.METHODS[cfg.method.name] = replace(method, loss=recording(method.loss, steps))
    try:
        metrics = job.run(cfg)
        ended = f"test_f1_macro {metrics['test_f1_macro']:.2f}, test_f1_minority {metrics['test_f1_minority']:.2f}"
    except Diverged as error:
        ended = f"diverged: {error}"
    without = sum(s["minority_images"] == 0 for s in steps)
    print("\n".join(windows(steps)), f"\n{len(steps)} steps; {without} batches without a minority image; {ended}")
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "ended": ended, "steps": steps}))


if __name__ == "__main__":
    main()
