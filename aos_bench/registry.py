"""Every method, network (model.arch) and dataset the suite runs, as an Entry: its name in the paper's words, the
rules of its parameters (the keys of its conf/ file, with their defaults there) and whether hydra/launcher=stacked can
train it; and every launcher it knows (LAUNCHERS), with how its jobs run and the rules of its own keys.

checks.validate reads a config's parameter rules from the entries its method, model and dataset name, the report its
display names; the implementations sit in tables of the same names beside the code (methods.METHODS,
models.BUILDERS, data.LOADERS), and tests/test_registry.py holds the two in step. As DomainBed's hparams registry,
this module is apart from the code so that the door (aos_bench.sweep) checks a config without importing torch.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from aos_bench.rules import Rule, choice, flag, is_class_list, is_number, number, numbers, text, whole


@dataclass(frozen=True)
class Entry:
    """One registered thing: its display name, the rules of its parameters (keys under its config group, e.g. `eps`
    for method.eps) and whether the stacked launcher trains it (False: refused in one line, checks.stack_problem)."""

    display: str
    params: Mapping[str, Rule] = field(default_factory=dict)
    stacks: bool = True


REDRAW = flag()  # true = draw the resampled set anew each epoch
BETA = Rule("null (inverse frequency), or a number in [0, 1)", lambda v: v is None or (is_number(v) and 0 <= v < 1))

METHODS: dict[str, Entry] = {  # the report's column order: the paper's three first
    "base": Entry("BASE"),
    "ros": Entry("ROS", {"redraw": REDRAW}),
    "aos": Entry(
        "AOS",
        {
            "redraw": REDRAW,
            "eps": number(0, 1, unit="FGSM step in pixel units of [0, 1] images"),
            "p": number(0, 1, unit="a probability"),
            "steps": whole(1),
            "targeted": flag(),
        },
    ),
    "rus": Entry("RUS", {"redraw": REDRAW}),
    "smote": Entry("SMOTE", {"k": whole(1)}),
    "reweight": Entry("Reweight", {"beta": BETA}),
    "focal": Entry("Focal", {"gamma": number(0)}),
    "ldam_drw": Entry(
        "LDAM-DRW",
        {"max_m": number(0, unit="logit units"), "s": number(0, low_open=True), "beta": BETA,
         "drw_start": number(0, 1, unit="fraction of the optimizer steps")},
    ),
    "balanced_softmax": Entry("Bal. softmax", {"tau": number(0)}),
    "threshold": Entry("Threshold"),
}

DEPTH = Rule(  # layers of He et al.'s CIFAR ResNet: n blocks of two convs in each of 3 stages, a stem and a head
    "6n + 2 for a whole n >= 1 (20, 32, 44, 56, 110)", lambda v: type(v) is int and v >= 8 and (v - 2) % 6 == 0
)
# free of BatchNorm and dropout, lenet alone trains stacked: see aos_bench/train_stacked.py
MODELS: dict[str, Entry] = {
    "convnet": Entry("ConvNet", {"widths": numbers(whole(1)), "convs_per_stage": whole(1)}, stacks=False),
    "lenet": Entry("LeNet", {"widths": numbers(whole(1)), "hidden": numbers(whole(1)), "pad_input": whole(0), "conv_relu": flag()}),
    "allcnn": Entry("All-CNN", {"widths": numbers(whole(1)), "dropout": numbers(number(0, 1, high_open=True))}, stacks=False),
    "resnet18": Entry("ResNet-18", stacks=False),
    "cifar_resnet": Entry("CIFAR ResNet", {"depth": DEPTH, "widths": numbers(whole(1)), "cosine_head": flag()}, stacks=False),
}

SKIP_BAD = flag()  # true = leave out the files that do not decode as images
DATASETS: dict[str, Entry] = {
    "mnist": Entry("MNIST"),
    "cifar10": Entry("CIFAR-10", {"skip_bad": SKIP_BAD}),
    "intel": Entry("Intel", {"skip_bad": SKIP_BAD}),
    "synthetic": Entry(
        "synthetic",
        {"channels": choice(1, 3), "n_classes": whole(2), "train_per_class": whole(1), "test_per_class": whole(1), "seed": whole(0)},
    ),
    "folder": Entry(
        "folder",
        {
            "root": text(),
            "skip_bad": SKIP_BAD,
            "channels": Rule(
                "1 (grey) or 3 (RGB), or null (folder: 1 if every image is grey, else 3)", lambda v: v is None or (type(v) is int and v in (1, 3))
            ),
            "test_fraction": number(0, 1, low_open=True, high_open=True, unit="fraction of each class held out for testing"),
            "split_seed": whole(0),
            "natural_minority": flag(),
            "minority_rho": number(1, unit="a class is minority when the largest class has more than minority_rho times its images"),
            "minority_classes": Rule(
                "a list of class names or indices, or null (the rule of dataset.minority_rho)",
                lambda v: v is None or is_class_list(v),
            ),
        },
    ),
}


@dataclass(frozen=True)
class Launcher:
    """A Hydra launcher (hydra/launcher=<name>): the class Hydra instantiates (the end of hydra.launcher._target_),
    whether its jobs run in the launching process (sharing its signals, not in worker processes or cluster jobs),
    whether it trains them stacked or returns before they run, and the rules of the keys it adds to Hydra's own."""

    target: str
    in_process: bool
    stacked: bool = False
    detached: bool = False
    params: Mapping[str, Rule] = field(default_factory=dict)


LAUNCHERS: dict[str, Launcher] = {  # Hydra's own and its plugins' (no conf/ file here), then this suite's (conf/hydra/launcher/)
    "basic": Launcher("BasicLauncher", in_process=True),
    "joblib": Launcher("JoblibLauncher", in_process=False),
    "submitit_local": Launcher("LocalLauncher", in_process=False),
    "submitit_slurm": Launcher("SlurmLauncher", in_process=False),
    "slurm_detached": Launcher("DetachedSlurmLauncher", in_process=False, detached=True),
    "stacked": Launcher("StackedLauncher", in_process=True, stacked=True, params={"max_models": whole(1)}),
}


def launcher_of(launcher: Mapping) -> Launcher | None:
    """The registered launcher of a hydra.launcher config, by the class its _target_ names; None for one the suite
    does not know."""
    name = str(launcher.get("_target_", "")).rpartition(".")[2]
    return next((entry for entry in LAUNCHERS.values() if entry.target == name), None)


# config group -> (the key of its options that names an entry, the entries)
REGISTRY: dict[str, tuple[str, dict[str, Entry]]] = {"dataset": ("name", DATASETS), "method": ("name", METHODS), "model": ("arch", MODELS)}


def display(name: str) -> str:
    """The paper's name of a registered dataset or method ('CIFAR-10', 'AOS'); the name itself for any other."""
    entry = DATASETS.get(name) or METHODS.get(name)
    return entry.display if entry else name
