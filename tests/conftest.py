"""Shared test helpers: where the real datasets are, and the project's real config, composed and shrunk."""

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
# A relative AOS_DATA_DIR is taken from the project root, like the default ../shared/data.
DATA = (ROOT / os.environ.get("AOS_DATA_DIR", "../shared/data")).resolve()


def needs(folder: str) -> pytest.MarkDecorator:
    """Skip unless the real dataset folder is present under DATA."""
    return pytest.mark.skipif(
        not (DATA / folder).exists(), reason=f"real datasets not found at {DATA / folder}: set AOS_DATA_DIR"
    )


def make_config(*overrides: str) -> DictConfig:
    """The project's config composed from conf/ with command-line style overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked gpu skip, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
