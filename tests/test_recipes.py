"""Recipes: each composes with every dataset and preset and sets exactly the model, augmentation, epochs and lr of its file."""

import pytest
import yaml
from conftest import ROOT, make_config
from omegaconf import OmegaConf

DATASETS = ("mnist", "cifar10", "intel", "synthetic", "folder")
RECIPES = sorted(p.stem for p in (ROOT / "conf" / "recipe").glob("*.yaml"))


def recipe_file(recipe: str, dataset: str) -> dict:
    """conf/recipe_dataset/<recipe>_<dataset>.yaml as written."""
    return yaml.safe_load((ROOT / "conf" / "recipe_dataset" / f"{recipe}_{dataset}.yaml").read_text())


def test_the_two_recipes_exist():
    assert RECIPES == ["modern", "paper"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("recipe", RECIPES)
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
        cfg = make_config("dataset=mnist", f"recipe={recipe}", "train=smoke")
        assert cfg.train.max_steps == 6 and cfg.train.epochs == 2


@pytest.mark.parametrize("preset", ["table1", "table2", "smoke"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_compose_with_the_presets(preset, recipe):
    cfg = make_config(f"experiment={preset}", f"recipe={recipe}")
    assert cfg.recipe.name == recipe and cfg.preset == preset
