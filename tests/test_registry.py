"""Every registered method, network and dataset is whole: code, conf/ file, a rule for each of its keys, a display
name, a docs row, and for methods and networks a stacked path or a refusal; and a method added in one entry is
checked, refused, reported and refused by the stacked launcher without any other table to touch."""

import importlib

import pandas as pd
import pytest
import torch
from conftest import ROOT, make_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from aos_bench import data, methods, models, registry, sweep
from aos_bench.checks import RULES, launcher_problem, stack_problem, validate
from aos_bench.errors import UsageError
from aos_bench.registry import METHODS, MODELS, REGISTRY, Entry
from aos_bench.report import studies
from aos_bench.rules import number

CODE = {"method": methods.METHODS, "model": models.BUILDERS, "dataset": data.LOADERS}  # each group's implementations
DOCS = {"method": "docs/methods.md", "model": "docs/configuration.md", "dataset": "docs/data.md"}  # each entry a row there


def options(group: str) -> dict[str, dict]:
    """conf/<group>/*.yaml: option name -> its values as a plain dict."""
    return {path.stem: OmegaConf.to_container(OmegaConf.load(path)) for path in sorted((ROOT / "conf" / group).glob("*.yaml"))}


def keys(values: dict, prefix: str = "") -> list[str]:
    """The dotted keys of the leaves of `values`: {'augment': {'flip': True}} -> ['augment.flip']."""
    return [k for key, value in values.items() for k in (keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]


def docs_row(group: str, name: str) -> str:
    """The row of `name` in its group's docs table, '' where none."""
    return next((line for line in (ROOT / DOCS[group]).read_text().splitlines() if line.startswith(f"| `{name}` |")), "")


@pytest.mark.parametrize("group", sorted(REGISTRY))
def test_the_registry_and_the_code_register_the_same_names(group):
    assert list(REGISTRY[group][1]) and set(REGISTRY[group][1]) == set(CODE[group])


@pytest.mark.parametrize("group", sorted(REGISTRY))
def test_every_entry_has_its_conf_file_rules_display_name_and_docs_row(group):
    named_by, entries = REGISTRY[group]
    found = options(group)
    assert {values[named_by] for values in found.values()} == set(entries)  # every entry an option, every option an entry
    for option, values in found.items():
        entry = entries[values[named_by]]
        unruled = [key for key in keys(values) if key != named_by and key not in entry.params and f"{group}.{key}" not in RULES]
        assert not unruled, f"conf/{group}/{option}.yaml: no rule for {unruled}"
    for name, entry in entries.items():
        row = docs_row(group, name)
        assert entry.display and row, f"{group} {name}: display name {entry.display!r}, row in {DOCS[group]}: {row!r}"
        if group != "dataset":  # the methods' and networks' rows name their parameters
            assert all(f"`{key}`" in row for key in entry.params), f"{DOCS[group]}: {name}'s row lacks a parameter of {list(entry.params)}"


def test_a_recipe_sets_only_keys_that_have_rules():
    for option, values in options("recipe_method").items():
        method = option.split("_", 1)[1]
        assert all(key in METHODS[method].params or f"method.{key}" in RULES for key in keys(values.get("method", {}))), option


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_trains_stacked_exactly_when_its_hooks_have_a_stacked_form(name):
    perturb = methods.METHODS[name].perturb
    assert METHODS[name].stacks == (perturb is None or perturb.stack is not None)


@pytest.mark.parametrize("option", sorted(options("model")))
def test_a_network_trains_stacked_exactly_when_it_has_no_batchnorm_and_no_dropout(option):
    cfg = make_config(f"model={option}", "dataset=synthetic")
    net = models.build_model(cfg.model, (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
    stateful = any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in net.modules())
    assert MODELS[cfg.model.arch].stacks == (not stateful)
    assert (stack_problem(cfg) is None) == MODELS[cfg.model.arch].stacks  # the door says so, in one line
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.fixture
def mixup(monkeypatch):
    """A throwaway method registered as a contributor adds one: its hooks in methods.METHODS, its entry (a parameter
    `alpha` >= 0, no stacked form) in registry.METHODS; gone after the test."""
    monkeypatch.setitem(methods.METHODS, "mixup", methods.Method(methods.keep_all))
    monkeypatch.setitem(METHODS, "mixup", Entry("Mixup", {"alpha": number(0, unit="Beta distribution's parameter")}, stacks=False))


def test_a_new_method_is_validated_refused_reported_and_refused_stacked(mixup):
    cfg = make_config("dataset=synthetic", "method=base", "method.name=mixup", "+method.alpha=0.2")
    validate(cfg)  # its rule comes from its entry: no table of checks to touch
    with pytest.raises(UsageError, match=r"^method.alpha=-1: a number >= 0 \(Beta distribution's parameter\)$"):
        validate(make_config("dataset=synthetic", "method=base", "method.name=mixup", "+method.alpha=-1"))
    assert stack_problem(cfg).startswith("method.name=mixup: hydra/launcher=stacked has no stacked form")

    runs = pd.DataFrame(
        [{"dataset": "synthetic", "imbalance": "step", "mu": 0.3, "rho": 10.0, "method": m, "seed": s, "f1": f1 + s, "f1_minority": f1,
          "lr_scale": 1.0} for m, f1 in (("mixup", 60.0), ("aos", 50.0)) for s in range(3)]
    )
    cells, tests = studies.method_cells(runs), studies.against_reference(runs)
    order = studies.method_order(runs["method"].unique())
    f1, _, paired = studies.wide_table(cells, tests, order, studies.rows_in_order(cells))
    assert order == ["aos", "mixup"]  # after every method registered before it
    assert f1.splitlines()[0] == "| row | AOS | Mixup |" and "| synthetic step mu=0.3 rho=10 | +10.00, p=0.250 (n=3) |" in paired
    assert registry.display("mixup") == "Mixup"



@pytest.mark.parametrize("name", sorted(registry.LAUNCHERS))
def test_each_registered_launcher_is_the_class_its_option_composes(name):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        launcher = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True).hydra.launcher
    module, _, cls = launcher._target_.rpartition(".")
    assert hasattr(importlib.import_module(module), cls)  # Hydra can instantiate it
    assert registry.launcher_of(launcher) is registry.LAUNCHERS[name]


def test_every_launcher_of_conf_is_registered_with_a_rule_for_each_key_it_adds_to_hydras():
    found = options("hydra/launcher")
    assert found.keys() == {"stacked", "slurm_detached"} and found.keys() <= registry.LAUNCHERS.keys()
    for name, values in found.items():
        assert set(values) - {"_target_", "defaults"} == set(registry.LAUNCHERS[name].params), name


def test_how_a_launcher_runs_its_jobs_is_read_from_its_entry():
    flags = {name: (sweep.jobs_in_process(OmegaConf.create({"_target_": f"x.{launcher.target}"})),
                    sweep.is_stacked(OmegaConf.create({"_target_": f"x.{launcher.target}"})),
                    sweep.is_detached(OmegaConf.create({"_target_": f"x.{launcher.target}"})))
             for name, launcher in registry.LAUNCHERS.items()}
    assert flags == {"basic": (True, False, False), "joblib": (False, False, False), "submitit_local": (False, False, False),
                     "submitit_slurm": (False, False, False), "slurm_detached": (False, False, True), "stacked": (True, True, False)}
    assert sweep.jobs_in_process(OmegaConf.create({"_target_": "elsewhere.RayLauncher"})) is False  # one it does not know


def test_a_launcher_key_out_of_its_rule_is_refused_and_an_unknown_launcher_is_not_checked():
    stacked = {"_target_": "hydra_plugins.aos_bench_stacked.StackedLauncher"}
    assert launcher_problem(OmegaConf.create(stacked | {"max_models": 0})) == "hydra.launcher.max_models=0: a whole number >= 1"
    assert launcher_problem(OmegaConf.create(stacked | {"max_models": 64})) is None
    assert launcher_problem(OmegaConf.create({"_target_": "elsewhere.RayLauncher", "max_models": 0})) is None
