"""Image folders written for the tests, and a guard that a load reads the cache."""

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.io import write_png

from aos_bench import data


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any image decoding fail, so a load must come from the cache."""

    def no_decoding(*args) -> None:
        raise AssertionError("decoded again despite a fresh cache")

    monkeypatch.setattr(data, "_decode_images", no_decoding)


def write_image_folder(root: Path, classes: list[str], per_class: int, height: int, width: int) -> None:
    """Write per_class random PNGs per class under root/<class>/; the first class's first image is grey."""
    generator = torch.Generator().manual_seed(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            channels = 1 if (name, i) == (classes[0], 0) else 3
            image = torch.randint(0, 256, (channels, height, width), dtype=torch.uint8, generator=generator)
            write_png(image, str(root / name / f"{i:03d}.png"))


def intel_cfg(image_size: int = 8) -> DictConfig:
    """Config of the intel dataset at the given size."""
    return OmegaConf.create({"name": "intel", "image_size": image_size, "download": False})
