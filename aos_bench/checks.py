"""Every config value checked for type and range before torch, MLflow or any data is touched.

RULES says what each key outside the registry accepts; the method, model and dataset a config names bring the rules of
their own parameters (aos_bench.registry). A key that the composed config lacks (an option without it) is skipped;
checks that need the data (how many classes `imbalance.mu` leaves as minority) stay where the data is.
"""

import re

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aos_bench.credentials import NO_CREDENTIALS, holds_credentials
from aos_bench.errors import UsageError
from aos_bench.paths import is_plain_name
from aos_bench.registry import METHODS, MODELS, REGISTRY, launcher_of
from aos_bench.rules import Rule, choice, flag, is_class_list, is_number, number, numbers, show, text, whole

MINORITY_MODES = ("random", "first", "last")  # imbalance.minority: which classes an imbalance makes minority, by name


def secret_free_uri(nullable: str) -> Rule:
    """A non-empty URI or path with no user or password in it, or null (`nullable` says what null means)."""
    return Rule(f"{NO_CREDENTIALS}, or null ({nullable})", lambda v: v is None or (isinstance(v, str) and v != "" and not holds_credentials(v)))


def plain_name(nullable: str) -> Rule:
    """A name that is a file of its own inside a folder (the report is named after it), or null (`nullable`: what null means)."""
    return Rule(
        f"a plain name (letters, digits, _ . -, not starting with a dot: no folder, no absolute path), or null ({nullable})",
        lambda v: v is None or (isinstance(v, str) and is_plain_name(v)),
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
    "imbalance.minority": Rule(
        f"one of: {', '.join(MINORITY_MODES)}, or (imbalance=step) a list of class indices or names",
        lambda v: (isinstance(v, str) and v in MINORITY_MODES) or is_class_list(v),
    ),
    "method.lr_scale": number(0, low_open=True, unit="times the recipe's train.lr"),
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


def rules_of(cfg: DictConfig) -> dict[str, Rule]:
    """RULES, then per registered group (dataset, method, model) the choice of its entries and the rules of the entry
    that `cfg` names."""
    found = dict(RULES)
    for group, (named_by, entries) in REGISTRY.items():
        found[f"{group}.{named_by}"] = choice(*entries)
        name = OmegaConf.select(cfg, f"{group}.{named_by}", default=None)
        if isinstance(name, str) and name in entries:
            found |= {f"{group}.{key}": rule for key, rule in entries[name].params.items()}
    return found


def validate(cfg: DictConfig) -> None:
    """Raise UsageError `<key>=<value>: <what is allowed>` for the first value that breaks its rule, or a missing key;
    then for values that each pass but cannot go together (combination_problem)."""
    for key, rule in rules_of(cfg).items():
        try:
            value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=True)
        except OmegaConfBaseException as error:  # ??? left unset, or ${...} naming nothing
            raise UsageError(f"{key}: {str(error).splitlines()[0]}") from None
        if value is ABSENT and not key.startswith(OPTIONAL + OPTIONAL_TRAIN):
            raise UsageError(f"{key} is missing: it must be {rule.allowed}")
        if value is not ABSENT and not rule.ok(value):
            raise UsageError(f"{key}={show(value)}: {rule.allowed}")
    if problem := combination_problem(cfg):
        raise UsageError(problem)


def combination_problem(cfg: DictConfig) -> str | None:
    """Why values that each pass their rule cannot go together, in one line; None if they can."""
    imbalance = cfg.imbalance
    kind, minority = imbalance.kind, imbalance.get("minority", "random")
    if kind == "none":
        return None
    if cfg.dataset.get("minority_classes") is not None:
        return (
            f"dataset.minority_classes is for imbalance=none (a split at its own sizes); imbalance={kind} "
            "makes its own minority classes: set imbalance.minority instead"
        )
    if imbalance.get("convention", "suite") == "cao2019" and (kind != "exp" or minority != "last"):
        return (
            f"imbalance.convention=cao2019 is Cao et al.'s long-tailed draw (class 0 largest, class N-1 smallest): "
            f"allowed with it: imbalance.kind=exp and imbalance.minority=last, not kind={kind} minority={show(minority)}"
        )
    if kind != "step" and not isinstance(minority, str):
        return f"imbalance.minority={show(minority)}: a list is for imbalance=step only; with imbalance={kind}: one of: {', '.join(MINORITY_MODES)}"
    return None


def launcher_problem(launcher: DictConfig) -> str | None:
    """Why a key the launcher adds to Hydra's breaks its rule (registry.LAUNCHERS), as `hydra.launcher.<key>=<value>:
    <allowed>`; None if every one passes, or the launcher is not one the suite registers."""
    entry = launcher_of(launcher)
    for key, rule in (entry.params if entry else {}).items():
        if not rule.ok(value := launcher.get(key)):
            return f"hydra.launcher.{key}={show(value)}: {rule.allowed}"
    return None


def stack_problem(cfg: DictConfig) -> str | None:
    """Why hydra/launcher=stacked cannot train this job, as `<key>=<value>: <allowed>`; None if it can."""
    if not MODELS[cfg.model.arch].stacks:
        stackable = ", ".join(arch for arch, entry in MODELS.items() if entry.stacks)
        return (
            f"model.arch={cfg.model.arch}: hydra/launcher=stacked trains BatchNorm- and dropout-free networks only "
            f"({stackable}: the recipe=paper networks); run this one with the basic or joblib launcher"
        )
    if not METHODS[cfg.method.name].stacks:
        return (f"method.name={cfg.method.name}: hydra/launcher=stacked has no stacked form of its perturb hook;"
                " run it with the basic or joblib launcher")
    if cfg.train.compile:
        return "train.compile=true: hydra/launcher=stacked runs eager stacked models; allowed with it: false"
    if cfg.tracking.get("checkpoint_dir") is not None:
        return (f"tracking.checkpoint_dir={cfg.tracking.checkpoint_dir}: hydra/launcher=stacked saves no checkpoint"
                " (a stopped stack trains again); allowed with it: null")
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
