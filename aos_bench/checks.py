"""Every config value checked for type and range before torch, MLflow or any data is touched.

One table, RULES, says what each key accepts. A key that the composed config lacks (an option without it) is
skipped; checks that need the data (how many classes `imbalance.mu` leaves as minority) stay where the data is.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aos_bench.credentials import NO_CREDENTIALS, holds_credentials
from aos_bench.errors import UsageError
from aos_bench.paths import is_plain_name



@dataclass(frozen=True)
class Rule:
    """What one key accepts: a test of its value, and the words that tell a user what is allowed."""

    allowed: str
    ok: Callable[[object], bool]


def show(value: object) -> str:
    """A value as a user types it on the command line: null, true, 0.1, [1, 2], abc."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return f"[{', '.join(show(v) for v in value)}]"
    return str(value)


def is_number(value: object) -> bool:
    """An int or a finite float, not a bool (YAML's true is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(minimum: int, nullable: str = "") -> Rule:
    """A whole number >= minimum; `nullable` says what null means where null is allowed."""
    allowed = f"a whole number >= {minimum}" + (f", or null ({nullable})" if nullable else "")
    return Rule(allowed, lambda v: (bool(nullable) and v is None) or (is_number(v) and isinstance(v, int) and v >= minimum))


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False, unit: str = "") -> Rule:
    """A number in the interval from low to high, each end open or closed."""
    interval = f"{'(' if low_open else '['}{low:g}, {'inf' if high == math.inf else f'{high:g}'}{')' if high_open else ']'}"
    words = f"a number in {interval}" if high != math.inf else f"a number {'>' if low_open else '>='} {low:g}"
    return Rule(
        words + (f" ({unit})" if unit else ""),
        lambda v: is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high),
    )


def choice(*options: object) -> Rule:
    """One of the given values."""
    return Rule(f"one of: {', '.join(show(o) for o in options)}", lambda v: any(v == o and type(v) is type(o) for o in options))


def flag() -> Rule:
    """true or false."""
    return choice(True, False)


def text(nullable: str = "") -> Rule:
    """A non-empty string; `nullable` says what null means where null is allowed."""
    return Rule("a non-empty text" + (f", or null ({nullable})" if nullable else ""), lambda v: (bool(nullable) and v is None) or (isinstance(v, str) and v != ""))


def secret_free_uri(nullable: str) -> Rule:
    """A non-empty URI or path with no user or password in it, or null (`nullable` says what null means)."""
    return Rule(f"{NO_CREDENTIALS}, or null ({nullable})", lambda v: v is None or (isinstance(v, str) and v != "" and not holds_credentials(v)))


def plain_name(nullable: str) -> Rule:
    """A name that is a file of its own inside a folder (the report is named after it), or null (`nullable`: what null means)."""
    return Rule(
        f"a plain name (letters, digits, _ . -, not starting with a dot: no folder, no absolute path), or null ({nullable})",
        lambda v: v is None or (isinstance(v, str) and is_plain_name(v)),
    )


def numbers(item: Rule, length: int | None = None, nullable: str = "") -> Rule:
    """A list whose items each pass `item` (of `length` items when given); `nullable` says what null means where allowed."""
    size = f"{length} " if length else ""
    return Rule(
        f"a list of {size}items, each {item.allowed}" + (f"; or null ({nullable})" if nullable else ""),
        lambda v: (bool(nullable) and v is None)
        or (isinstance(v, (list, ListConfig)) and len(v) >= 1 and (length is None or len(v) == length) and all(item.ok(i) for i in v)),
    )


RULES: dict[str, Rule] = {
    "seed": whole(0),
    "data_seed": whole(0),
    "data_dir": text(),
    "cache_dir": text("$AOS_CACHE_DIR, else ~/.cache/aos_bench"),
    "force": flag(),
    "preset": plain_name("no preset: the report is named sweep"),
    "dataset.image_size": whole(1),
    "dataset.download": flag(),
    "dataset.skip_bad": flag(),
    "dataset.channels": Rule(
        "1 (grey) or 3 (RGB), or null (folder: 1 if every image is grey, else 3)", lambda v: v is None or (type(v) is int and v in (1, 3))
    ),
    "dataset.root": text(),
    "dataset.test_fraction": number(0, 1, low_open=True, high_open=True, unit="fraction of each class held out for testing"),
    "dataset.split_seed": whole(0),
    "dataset.natural_minority": flag(),
    "dataset.minority_rho": number(1, unit="a class is minority when the largest class has more than minority_rho times its images"),
    "dataset.minority_classes": Rule(
        "a list of class names or indices, or null (the rule of dataset.minority_rho)",
        lambda v: v is None or (isinstance(v, (list, ListConfig)) and len(v) >= 1 and all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in v)),
    ),
    "dataset.n_classes": whole(2),
    "dataset.train_per_class": whole(1),
    "dataset.test_per_class": whole(1),
    "dataset.seed": whole(0),
    "dataset.mean": numbers(number(0, 1), nullable="measured on the training split"),
    "dataset.std": numbers(number(0, low_open=True), nullable="measured on the training split"),
    "dataset.augment.flip": flag(),
    "dataset.augment.crop_pad": whole(0),
    "dataset.augment.pad": choice("reflect", "zeros"),
    "imbalance.kind": choice("none", "step", "linear", "exp"),
    "imbalance.mu": number(0, 1, low_open=True, unit="fraction of classes that are minority"),
    "imbalance.rho": number(1, unit="largest class size / smallest"),
    "imbalance.n_max": whole(1, "the smallest class size of the train split"),
    "imbalance.convention": choice("suite", "cao2019"),
    "method.eps": number(0, 1, unit="FGSM step in pixel units of [0, 1] images"),
    "method.p": number(0, 1, unit="a probability"),
    "method.redraw": flag(),
    "method.steps": whole(1),
    "method.targeted": flag(),
    "method.k": whole(1),
    "method.beta": Rule("null (inverse frequency), or a number in [0, 1)", lambda v: v is None or (is_number(v) and 0 <= v < 1)),
    "method.gamma": number(0),
    "method.max_m": number(0, unit="logit units"),
    "method.s": number(0, low_open=True),
    "method.drw_start": number(0, 1, unit="fraction of the optimizer steps"),
    "method.tau": number(0),
    "method.lr_scale": number(0, low_open=True, unit="times the recipe's train.lr"),
    "model.widths": numbers(whole(1)),
    "model.hidden": numbers(whole(1)),
    "model.dropout": numbers(number(0, 1, high_open=True)),
    "model.pad_input": whole(0),
    "model.conv_relu": flag(),
    "model.convs_per_stage": whole(1),
    "model.depth": whole(8),
    "model.cosine_head": flag(),
    "train.epochs": whole(1),
    "train.lr": number(0, low_open=True, unit="peak SGD learning rate"),
    "train.momentum": number(0, 1, high_open=True),
    "train.weight_decay": number(0),
    "train.warmup": number(0, 1, unit="fraction of all steps"),
    "train.clip_norm": Rule("a number > 0 (the gradient's largest L2 norm), or null (no clipping)", lambda v: v is None or (is_number(v) and v > 0)),
    "train.batch_size": whole(1),
    "train.eval_batch_size": whole(1),
    "train.max_steps": whole(1, "epochs x steps per epoch"),
    "train.epoch_size": choice("balanced", "method", "dataset"),
    "train.schedule": choice("linear", "step"),
    "train.warmup_epochs": whole(0),
    "train.milestones": numbers(whole(0)),
    "train.lr_decay": number(0, 1, low_open=True, unit="lr factor per milestone"),
    "train.nesterov": flag(),
    "train.device": choice("auto", "cpu", "cuda"),
    "train.precision": choice("auto", "fp32", "bf16"),
    "train.threads": whole(1, "torch's choice"),
    "train.deterministic": flag(),
    "train.compile": flag(),
    "train.progress": choice("auto", True, False),
    "tracking.uri": secret_free_uri("$MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db"),
    "tracking.experiment": text(),
    "tracking.checkpoint_dir": text("no checkpoints"),
}
ABSENT = object()  # OmegaConf.select's default for a key the composed config does not have
OPTIONAL = ("dataset.", "imbalance.", "method.", "model.")  # keys that only some options of these groups have
# train keys that only recipe=lt sets: absent = the linear schedule and Nesterov momentum of the other recipes, whose
# runs' config_hash (and so their sweeps' resume) stays as it was before these keys existed
OPTIONAL_TRAIN = ("train.schedule", "train.warmup_epochs", "train.milestones", "train.lr_decay", "train.nesterov")


def validate(cfg: DictConfig) -> None:
    """Raise UsageError `<key>=<value>: <what is allowed>` for the first value that breaks its rule, or a missing key."""
    for key, rule in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=True)
        except OmegaConfBaseException as error:  # ??? left unset, or ${...} naming nothing
            raise UsageError(f"{key}: {str(error).splitlines()[0]}") from None
        if value is ABSENT and not key.startswith(OPTIONAL + OPTIONAL_TRAIN):
            raise UsageError(f"{key} is missing: it must be {rule.allowed}")
        if value is not ABSENT and not rule.ok(value):
            raise UsageError(f"{key}={show(value)}: {rule.allowed}")


STACKABLE_ARCHS = ("lenet",)  # free of BatchNorm (convnet, resnet18) and dropout (allcnn): see aos_bench/stack.py


def stack_problem(cfg: DictConfig) -> str | None:
    """Why hydra/launcher=stacked cannot train this job, as `<key>=<value>: <allowed>`; None if it can."""
    if cfg.model.arch not in STACKABLE_ARCHS:
        return (
            f"model.arch={cfg.model.arch}: hydra/launcher=stacked trains BatchNorm- and dropout-free networks only "
            f"({', '.join(STACKABLE_ARCHS)}: the recipe=paper networks); run this one with the basic or joblib launcher"
        )
    if cfg.train.compile:
        return "train.compile=true: hydra/launcher=stacked runs eager stacked models; allowed with it: false"
    if cfg.tracking.get("checkpoint_dir") is not None:
        return f"tracking.checkpoint_dir={cfg.tracking.checkpoint_dir}: hydra/launcher=stacked saves no checkpoint (a stopped stack trains again); allowed with it: null"
    return None


def override_key(override: str) -> str:
    """The config key a command-line override sets: `+row=a,b` -> `row`, `~seed` -> `seed`."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(key: str, overrides: list[str]) -> str:
    """The value that the command line gave `key` (the last override of it), or `?`."""
    given = [o.split("=", 1)[1] for o in overrides if "=" in o and override_key(o) == key]
    return given[-1] if given else "?"


def hydra_error_line(error: HydraException, overrides: list[str]) -> str:
    """Hydra's error about an unknown option or key, or an override it cannot parse, as `<key>=<value>: <allowed>`."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"{group}={name}: one of: {', '.join(error.options)}"
    if isinstance(error, MissingConfigException):
        return f"--config-name={error.missing_cfg_file}: no such config in the config directory"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: not a valid override ({first}); the grammar: https://hydra.cc/docs/advanced/override_grammar/basic/"
    if match := re.match(r"Could not override '([^']+)'", first):
        key = match[1]
        parent = key.rpartition(".")[0] or "the config"
        return f"{key}={override_value(key, overrides)}: no such key in {parent}; `python -m aos_bench --cfg job` lists them all"
    if match := re.match(r"Could not append to config. An item is already at '([^']+)'", first):
        key = match[1]
        return f"+{key}={override_value(key, overrides)}: {key} exists already; set it without the +"
    return first
