"""Bad values are rejected before torch and MLflow load: one line `aos_bench: <key>=<value>: <allowed>`, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_config

from aos_bench.checks import validate
from aos_bench.errors import UsageError

# What a rejected command leaves loaded: an exit code, and whether any heavy module was imported before it.
PROBE = """
import runpy, sys
sys.argv = ["aos_bench", *sys.argv[1:]]
try:
    runpy.run_module("aos_bench", run_name="__main__")
except SystemExit as stop:
    heavy = sorted(m for m in ("torch", "mlflow", "sklearn", "torchvision") if m in sys.modules)
    print(f"exit={stop.code} heavy={heavy}")
"""


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("imbalance.mu=abc", "imbalance.mu=abc: a number in (0, 1]"),
        ("seed=abc", "seed=abc: a whole number >= 0"),
        ("seed=1.5", "seed=1.5: a whole number >= 0"),
        ("train.lr=null", "train.lr=null: a number > 0"),
        ("train.lr=-0.1", "train.lr=-0.1: a number > 0"),
        ("train.lr=0", "train.lr=0: a number > 0"),
        ("method.eps=2", "method.eps=2: a number in [0, 1]"),
        ("method.p=1.5", "method.p=1.5: a number in [0, 1]"),
        ("train.epochs=true", "train.epochs=true: a whole number >= 1"),
        ("train.max_steps=0", "train.max_steps=0: a whole number >= 1, or null"),
        ("train.epoch_size=half", "train.epoch_size=half: one of: balanced, method"),
        ("train.warmup=nan", "train.warmup=nan: a number in [0, 1]"),
        ("train.clip_norm=0", "train.clip_norm=0: a number > 0 (the gradient's largest L2 norm), or null (no clipping)"),
        ("imbalance.rho=0.5", "imbalance.rho=0.5: a number >= 1"),
        ("imbalance=exp imbalance.rho=0.5", "imbalance.rho=0.5: a number >= 1"),
        ("imbalance.kind=zipf", "imbalance.kind=zipf: one of: none, step, linear, exp"),
        ("imbalance.minority=middle", "imbalance.minority=middle: one of: random, first, last, or (imbalance=step) a list"),
        ("imbalance.minority=[0,true]", "imbalance.minority=[0, true]: one of: random, first, last"),
        ("train.device=tpu", "train.device=tpu: one of: auto, cpu, cuda"),
        ("dataset.name=foo", "dataset.name=foo: one of: mnist, cifar10, intel, synthetic, folder"),
        ("dataset.image_size=0", "dataset.image_size=0: a whole number >= 1"),
        ("dataset.channels='3'", "dataset.channels=3: one of: 1, 3"),
        ("dataset.seed=true", "dataset.seed=true: a whole number >= 0"),
        ("dataset.n_classes=null", "dataset.n_classes=null: a whole number >= 2"),
        ("imbalance=linear imbalance.minority=[0,1]",
         "imbalance.minority=[0, 1]: a list is for imbalance=step only; with imbalance=linear: one of: random, first, last"),
        ("imbalance=exp +imbalance.convention=cao2019 imbalance.minority=first",
         "imbalance.convention=cao2019 is Cao et al.'s long-tailed draw (class 0 largest, class N-1 smallest): "
         "allowed with it: imbalance.kind=exp and imbalance.minority=last, not kind=exp minority=first"),
        ("dataset=folder dataset.root=x dataset.minority_classes=[a]", "dataset.minority_classes is for imbalance=none"),
        ("model=resnet32 model.depth=30", "model.depth=30: 6n + 2 for a whole n >= 1 (20, 32, 44, 56, 110)"),
        ("model.arch=vgg", "model.arch=vgg: one of: convnet, lenet, allcnn, resnet18, cifar_resnet"),
        ("model.widths=[8,x]", "model.widths=[8, x]: a list of items, each a whole number >= 1"),
        ("dataset.augment.flip=maybe", "dataset.augment.flip=maybe: one of: true, false"),
        ("~seed", "seed is missing"),
    ],
)
def test_a_bad_value_names_its_key_value_and_what_is_allowed(override, line):
    with pytest.raises(UsageError) as error:
        validate(make_config("dataset=synthetic", *override.split()))
    assert str(error.value).startswith(line)


def test_every_preset_and_option_passes():
    validate(make_config())  # the README's first command
    for preset in ("smoke", "table2", "noise"):
        for dataset in ("mnist", "cifar10", "intel"):
            validate(make_config(f"experiment={preset}", f"dataset={dataset}", "recipe=modern"))
    validate(make_config("experiment=table1", "dataset=cifar10", "imbalance=linear", "method=ros", "model=resnet18"))
    for recipe in ("paper", "modern"):
        validate(make_config("experiment=compare", "dataset=folder", "dataset.root=my_data", f"recipe={recipe}"))


def probe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m aos_bench ARGS` run by PROBE in tmp_path."""
    command = [sys.executable, "-c", PROBE, *args, f"hydra.run.dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multi"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["train.lr=-1"], "aos_bench: train.lr=-1: a number > 0 (peak SGD learning rate)"),
        (["method=foo"], "aos_bench: method=foo: one of: aos, balanced_softmax, base, focal, ldam_drw, reweight, ros, rus, smote, threshold"),
        (["train.foo=1"], "aos_bench: train.foo=1: no such key in train;"),
        (["+seed=3"], "aos_bench: +seed=3: seed exists already; set it without the +"),
        (["seed=["], "aos_bench: seed=[: not a valid override"),
        (["-m", "seed=0,1", "method.eps=0.1,5"], "aos_bench: method.eps=5: a number in [0, 1]"),
        (["-m", "method=base,nope"], "aos_bench: method=nope: one of: aos, balanced_softmax, base, focal, ldam_drw, reweight, ros, rus, smote, threshold"),
        (["-m", "hydra/launcher=stacked", "hydra.launcher.max_models=0"], "aos_bench: hydra.launcher.max_models=0: a whole number >= 1"),
    ],
)
def test_rejected_in_one_line_with_exit_code_2_before_torch_and_mlflow_load(tmp_path, args, line):
    result = probe(tmp_path, *args)
    assert result.stdout.strip() == "exit=2 heavy=[]", result.stdout + result.stderr
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "mlruns").exists()


def test_hydra_full_error_still_gives_hydra_s_own_report(tmp_path):
    command = [sys.executable, "-m", "aos_bench", "method=foo", f"hydra.run.dir={tmp_path}/out"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1 and "Traceback" in result.stderr and "Available options in 'method'" in result.stderr
