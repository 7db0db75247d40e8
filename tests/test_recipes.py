"""Recipes: each composes with every dataset and preset and sets exactly the model, augmentation, epochs and lr of its file."""

import pytest
import yaml
from conftest import ROOT, make_config
from omegaconf import OmegaConf

DATASETS = ("mnist", "cifar10", "intel", "synthetic", "folder")
RECIPES = sorted(p.stem for p in (ROOT / "conf" / "recipe").glob("*.yaml"))
PAIRS = sorted(tuple(p.stem.split("_", 1)) for p in (ROOT / "conf" / "recipe_dataset").glob("*.yaml"))  # (recipe, dataset)
ALL_DATASETS = ("modern", "paper")  # the recipes with a file for every dataset; recipe=lt is CIFAR-10's benchmark


def recipe_file(recipe: str, dataset: str) -> dict:
    """conf/recipe_dataset/<recipe>_<dataset>.yaml as written."""
    return yaml.safe_load((ROOT / "conf" / "recipe_dataset" / f"{recipe}_{dataset}.yaml").read_text())


def test_the_three_recipes_exist_and_lt_covers_cifar10_and_the_synthetic_set():
    assert RECIPES == ["lt", "modern", "paper"]
    assert [d for r, d in PAIRS if r == "lt"] == ["cifar10", "synthetic"]
    assert all((recipe, dataset) in PAIRS for recipe in ALL_DATASETS for dataset in DATASETS)


@pytest.mark.parametrize(("recipe", "dataset"), PAIRS)
def test_recipe_sets_model_augmentation_epochs_epoch_size_lr_and_clip(recipe, dataset):
    cfg = make_config(f"dataset={dataset}", f"recipe={recipe}")
    spec = recipe_file(recipe, dataset)
    (model,) = [entry["/model"] for entry in spec["defaults"]]
    expected_model = yaml.safe_load((ROOT / "conf" / "model" / f"{model}.yaml").read_text()) | spec.get("model", {})
    assert OmegaConf.to_container(cfg.model) == expected_model  # the model file, with the recipe's own changes
    assert OmegaConf.to_container(cfg.dataset.augment) == spec["dataset"]["augment"]
    assert cfg.train.epochs == spec["train"]["epochs"] and cfg.train.lr == spec["train"]["lr"]
    assert cfg.train.epoch_size == spec["train"]["epoch_size"]  # the recipe's, not train/default's
    assert cfg.train.clip_norm == spec["train"]["clip_norm"] == (10 if (recipe, dataset) == ("paper", "mnist") else None)
    assert cfg.recipe.name == recipe


def test_paper_recipe_trains_lenets_and_augments_the_natural_images_only():
    augment = {"mnist": {"flip": False, "crop_pad": 0}, "cifar10": {"flip": True, "crop_pad": 4}, "intel": {"flip": True, "crop_pad": 2}}
    for dataset, expected in augment.items():  # the natural images' flips and shifts: the calibration in results/README.md
        cfg = make_config(f"dataset={dataset}", "recipe=paper")
        assert cfg.model.arch == "lenet" and "BatchNorm" not in str(cfg.model)
        assert cfg.dataset.augment == expected and cfg.train.epoch_size == "balanced"


def test_a_model_override_replaces_the_recipes_network_only():
    cfg = make_config("dataset=cifar10", "recipe=paper", "model=resnet18")
    assert cfg.model.arch == "resnet18"
    assert cfg.train.epochs == recipe_file("paper", "cifar10")["train"]["epochs"]


def test_smoke_training_keeps_its_few_steps_under_any_recipe():
    for recipe in RECIPES:
        cfg = make_config("dataset=synthetic", f"recipe={recipe}", "train=smoke")
        assert cfg.train.max_steps == 6 and cfg.train.epochs == 2


@pytest.mark.parametrize("preset", ["table1", "table2", "smoke"])
@pytest.mark.parametrize("recipe", ALL_DATASETS)
def test_recipes_compose_with_the_presets(preset, recipe):
    cfg = make_config(f"experiment={preset}", f"recipe={recipe}")
    assert cfg.recipe.name == recipe and cfg.preset == preset


def test_lt_recipe_is_cao_et_als_setting():
    cfg = make_config("dataset=cifar10", "recipe=lt", "imbalance=exp")
    train = OmegaConf.to_container(cfg.train)
    assert {k: train[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov")} == {
        "epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "nesterov": False}
    assert (train["schedule"], train["warmup_epochs"], train["milestones"], train["lr_decay"]) == ("step", 5, [160, 180], 0.01)
    assert cfg.model.arch == "cifar_resnet" and cfg.model.depth == 32 and not cfg.model.cosine_head
    assert OmegaConf.to_container(cfg.dataset.augment) == {"flip": True, "crop_pad": 4, "pad": "zeros"}
    ldam = make_config("dataset=cifar10", "recipe=lt", "method=ldam_drw")
    assert ldam.model.cosine_head and ldam.method.s == 30 and ldam.method.drw_start == 0.8  # epoch 160 of 200
    assert make_config("dataset=cifar10", "recipe=paper", "method=ldam_drw").method.s == 1  # recipe_method is lt's only
    assert make_config("dataset=cifar10", "recipe=lt", "method=focal").method.gamma == 1
    assert make_config("dataset=cifar10", "recipe=lt", "method=reweight").method.lr_scale == 1
