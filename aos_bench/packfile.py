"""The dataset pack's file: lossless WebP grids of the images a sweep needs, every train label, and the settings they
were loaded under (aos_bench.pack writes one for a sweep; aos_bench.data reads one found in data_dir)."""

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aos_bench.errors import UsageError

GRID = 32  # images per side of one WebP picture: 1024 images, 1024 x 1024 px for CIFAR-10 (WebP allows 16383)
NOT_CONTENT = ("download", "skip_bad")  # dataset keys that do not change the loaded images: a pack ignores them


def content_settings(dataset: Mapping) -> str:
    """The dataset config's keys that shape the loaded images (JSON): a pack is read only under the settings it was made with."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(dataset, resolve=True) if OmegaConf.is_config(dataset) else dict(dataset)
    return json.dumps({k: v for k, v in settings.items() if k not in NOT_CONTENT}, sort_keys=True)


def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) as lossless WebP grids: (the pictures' bytes end to end, each picture's end offset)."""
    blobs = []
    for start in range(0, len(images), GRID * GRID):
        chunk = images[start : start + GRID * GRID]
        tiles = np.zeros((GRID * GRID, *images.shape[1:]), np.uint8)
        tiles[: len(chunk)] = chunk
        n, h, w, c = tiles.shape
        picture = tiles.reshape(GRID, GRID, h, w, c).transpose(0, 2, 1, 3, 4).reshape(GRID * h, GRID * w, c)
        buffer = io.BytesIO()
        Image.fromarray(picture.squeeze(-1) if c == 1 else picture).save(buffer, "WEBP", lossless=True, quality=100, method=4)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    return np.concatenate(blobs), np.cumsum([len(b) for b in blobs])


def decode(blob: np.ndarray, ends: np.ndarray, n: int, shape: Sequence[int]) -> torch.Tensor:
    """The first `n` images of encode()'s pictures as uint8 (n, C, H, W), `shape` = (C, H, W)."""
    c, h, w = shape
    images = []
    for start, end in zip([0, *ends[:-1]], ends, strict=True):
        picture = np.asarray(Image.open(io.BytesIO(blob[start:end].tobytes())).convert("L" if c == 1 else "RGB"))
        tiles = picture.reshape(GRID, h, GRID, w, c).transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, h, w, c)
        images.append(tiles)
    return torch.from_numpy(np.concatenate(images)[:n]).permute(0, 3, 1, 2).contiguous()


def write_pack(
    path: Path, dataset: Mapping, train_x: torch.Tensor, train_y: torch.Tensor, rows: torch.Tensor, test_x: torch.Tensor,
    test_y: torch.Tensor, classes: Sequence[str],
) -> None:
    """Write the pack: the dataset's settings, every train label, the train images at `rows`, the whole test split, the classes."""
    rows = torch.unique(rows)  # sorted, once each
    train_blob, train_ends = encode(train_x[rows].permute(0, 2, 3, 1).numpy())
    test_blob, test_ends = encode(test_x.permute(0, 2, 3, 1).numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:  # uncompressed npz: WebP is compressed already
        np.savez(
            file, dataset=np.array(content_settings(dataset)), classes=np.array(list(classes)), shape=np.array(train_x.shape[1:]),
            train_y=train_y.numpy().astype(np.int64),
            rows=rows.numpy(), train_blob=train_blob, train_ends=train_ends, test_y=test_y.numpy().astype(np.int64),
            test_blob=test_blob, test_ends=test_ends,
        )


def read_pack(path: Path, dataset: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    """(train_x, train_y, test_x, test_y, classes, present) of the pack made under `dataset`'s settings: the full train
    split with the images the pack lacks black, and `present`, which train images it holds (bool, one per image)."""
    try:
        pack = np.load(path)
        made = str(pack["dataset"])
        if made != content_settings(dataset):
            raise UsageError(f"{path} was made with the dataset settings {made}, not this job's {content_settings(dataset)}: "
                             "make one for them with python -m aos_bench.pack, or move it away")
        shape, train_y, rows = pack["shape"].tolist(), torch.from_numpy(pack["train_y"]), torch.from_numpy(pack["rows"])
        train_x = torch.zeros((len(train_y), *shape), dtype=torch.uint8)
        train_x[rows] = decode(pack["train_blob"], pack["train_ends"], len(rows), shape)
        test_y = torch.from_numpy(pack["test_y"])
        test_x = decode(pack["test_blob"], pack["test_ends"], len(test_y), shape)
        classes = [str(c) for c in pack["classes"]]
    except (OSError, KeyError, ValueError) as error:
        raise UsageError(f"{path}: not a dataset pack that python -m aos_bench.pack wrote ({type(error).__name__}: {error})") from None
    present = torch.zeros(len(train_y), dtype=torch.bool)
    present[rows] = True
    return train_x, train_y, test_x, test_y, classes, present
