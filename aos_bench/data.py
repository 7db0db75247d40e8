"""Load the benchmark's image datasets as uint8 tensors, decoding image folders once and caching them."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig, OmegaConf
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import resize, rgb_to_grayscale

from aos_bench.errors import UsageError
from aos_bench.rules import show

# Bump when the cached content or its layout changes, so old cache files are never reused.
CACHE_FORMAT_VERSION = 1
# Formats torchvision.io.decode_image reads natively.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
INTEL_KAGGLE = "puneet6060/intel-image-classification"
# Files and folders that operating systems and archivers leave beside images: left out of every class, and counted.
OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})  # plus AppleDouble `._<name>` files
OS_FOLDER = "__MACOSX"  # the resource forks of a zip archive made on a Mac
OS_JUNK = "OS files (__MACOSX/, ._*, .DS_Store, Thumbs.db)"  # their count's name in ImageData.left_out
BROKEN_LINKS = "broken links"
# Folder names that mean a split, not a class: alone (val/) or joined to other words (digits_train/, test-set/).
SPLIT_WORDS = frozenset({"train", "training", "trainval", "test", "testing", "val", "valid", "validation"})


@dataclass(frozen=True)
class ImageData:
    """Train and test splits as CPU tensors: x uint8 (N, C, H, W), y int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    skipped: tuple[str, ...] = ()  # unreadable image files left out (dataset.skip_bad=true)
    test_source: str = "the dataset's own test split"  # where the test images come from, in words, for the run's log
    left_out: Mapping[str, int] = field(default_factory=dict)  # files of the folders not read as images: kind -> count
    present: torch.Tensor | None = None  # from a pack (aos_bench.pack): which train images it holds; None = all


def default_cache_dir() -> Path:
    """$AOS_CACHE_DIR, else $XDG_CACHE_HOME/aos_bench, else ~/.cache/aos_bench."""
    # Empty variables count as unset, as the XDG spec asks.
    if os.environ.get("AOS_CACHE_DIR"):
        return Path(os.environ["AOS_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "aos_bench"
    return Path.home() / ".cache" / "aos_bench"


def load_data(dataset: DictConfig | Mapping, data_dir: str | Path, cache_dir: str | Path | None) -> ImageData:
    """Load the train and test splits of the configured dataset as uint8 tensors."""
    name = dataset.get("name")  # one of LOADERS: checks.validate (registry.DATASETS) lets no other in
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    pack = Path(data_dir).expanduser() / f"{name}_pack.npz"
    if pack.is_file():  # a GPU node's copy of the images some sweep needs (python -m aos_bench.pack)
        from aos_bench.packfile import read_pack

        train_x, train_y, test_x, test_y, classes, present = read_pack(pack, dataset)
        return ImageData(train_x, train_y, test_x, test_y, classes, present=present)
    return LOADERS[name](dataset, Path(data_dir).expanduser(), cache)



def cached_loader() -> Callable[[DictConfig, str, str | None], ImageData]:
    """load_data that decodes each dataset (its config and folder) once, for the many jobs of a sweep that share it."""
    loaded: dict[tuple[str, str], ImageData] = {}

    def load(dataset: DictConfig, data_dir: str, cache_dir: str | None) -> ImageData:
        key = (OmegaConf.to_yaml(dataset), str(data_dir))
        if key not in loaded:
            loaded[key] = load_data(dataset, data_dir, cache_dir)
        return loaded[key]

    return load

def _one_line(error: BaseException) -> str:
    """First line of an exception's message, so UsageErrors stay single-line."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _load_mnist(dataset: Mapping, data_dir: Path, cache_dir: Path) -> ImageData:
    """MNIST from torchvision's layout <data_dir>/MNIST/raw (IDX files, plain or gzipped), downloading there if asked."""
    raw = data_dir / "MNIST" / "raw"
    for suffix in ("", ".gz"):  # plain files first, as torchvision leaves them after a download
        if all((raw / f"{name}{suffix}").is_file() for name in MNIST_FILES):
            return _mnist_from_idx([raw / f"{name}{suffix}" for name in MNIST_FILES])
    hint = f": expected {', '.join(MNIST_FILES)} (or each with .gz); set data_dir (or AOS_DATA_DIR) to the folder that holds MNIST/raw"
    if not dataset.get("download", False):
        raise UsageError(f"MNIST not found in {raw}{hint}, or set dataset.download=true on a machine with internet access")
    try:  # torchvision fetches and checks all four files into raw/, read below like any others
        _download(data_dir, "MNIST/raw", lambda root: torchvision.datasets.MNIST(root=root, train=True, download=True))
    # torchvision reports network failures as URLError (an OSError) and bad checksums as RuntimeError.
    except (RuntimeError, OSError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        # torchvision: `Error downloading x.gz:` ... the last mirror's error
        reason = f"{lines[0]} {lines[-1]}" if lines[0].endswith(":") else lines[0]
        raise UsageError(
            f"MNIST not found in {raw} (download failed, nothing written: {reason}){hint}, or download on a machine with internet access"
        ) from error
    return _mnist_from_idx([raw / name for name in MNIST_FILES])


def _mnist_from_idx(paths: list[Path]) -> ImageData:
    """MNIST from its four IDX files (train images, train labels, test images, test labels), plain or gzipped."""
    train_x, train_y, test_x, test_y = (_read_idx(path) for path in paths)
    return ImageData(
        train_x=train_x.unsqueeze(1),
        train_y=train_y.long(),
        test_x=test_x.unsqueeze(1),
        test_y=test_y.long(),
        # torchvision names them "0 - zero" etc.; plain digits read better in reports.
        classes=[str(i) for i in range(10)],
    )


def _read_idx(path: Path) -> torch.Tensor:
    """One IDX file of unsigned bytes, plain or gzip-compressed (.gz), as a uint8 tensor of the shape its header gives."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as file:
            content = file.read()
    except (OSError, EOFError) as error:  # not gzip (BadGzipFile is an OSError) or cut short
        raise UsageError(f"cannot read {path}: {_one_line(error)}") from error
    # Header: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, then each size as a big-endian int32.
    if len(content) < 4 or content[:3] != b"\x00\x00\x08":
        raise UsageError(f"{path} is not an IDX file of unsigned bytes (MNIST's format)")
    ndim = content[3]
    shape = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(shape)
    if len(content) != expected:
        unpacked = " unpacked" if path.suffix == ".gz" else ""
        raise UsageError(
            f"{path} is {len(content)} bytes{unpacked}, but its header's shape {shape} needs {expected}: "
            "the file is cut short or corrupt; replace it with a fresh copy"
        )
    return torch.frombuffer(bytearray(content[4 + 4 * ndim :]), dtype=torch.uint8).view(shape)


def _load_cifar10(dataset: Mapping, data_dir: Path, cache_dir: Path) -> ImageData:
    """CIFAR-10 from torchvision's pickled batches, else an ImageFolder copy, else a download if asked."""
    folder = data_dir / "cifar10"
    if (data_dir / "cifar-10-batches-py").is_dir():
        return _cifar10_torchvision(data_dir, download=False)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        # dataset.image_size does not apply: CIFAR-10 stays at its native 32x32.
        return _image_folder_splits(folder / "train", folder / "test", (32, 32), cache_dir, dataset.get("skip_bad", False))
    if dataset.get("download", False):
        return _cifar10_torchvision(data_dir, download=True)
    raise UsageError(
        f"CIFAR-10 not found: searched {data_dir / 'cifar-10-batches-py'} (torchvision's layout) and "
        f"{folder}/{{train,test}}/<class>/*.png (ImageFolder layout); set data_dir (or AOS_DATA_DIR) to the "
        "folder that holds either, or set dataset.download=true on a machine with internet access"
    )


def _cifar10_torchvision(data_dir: Path, download: bool) -> ImageData:
    """CIFAR-10 through torchvision.datasets.CIFAR10 (pickled batches under <data_dir>/cifar-10-batches-py)."""
    try:
        if download:
            _download(data_dir, "cifar-10-batches-py", lambda root: torchvision.datasets.CIFAR10(root=root, download=True))
        train = torchvision.datasets.CIFAR10(root=data_dir, train=True, download=False)
        test = torchvision.datasets.CIFAR10(root=data_dir, train=False, download=False)
    except (RuntimeError, OSError) as error:
        raise UsageError(
            f"CIFAR-10 could not be read from {data_dir / 'cifar-10-batches-py'}: {_one_line(error)}; "
            "set data_dir (or AOS_DATA_DIR) to a folder holding a complete copy, "
            "or set dataset.download=true on a machine with internet access"
        ) from error
    return ImageData(
        train_x=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_y=torch.tensor(train.targets, dtype=torch.int64),
        test_x=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_y=torch.tensor(test.targets, dtype=torch.int64),
        classes=list(train.classes),
    )


def _download(data_dir: Path, folder: str, fetch: Callable[[Path], object]) -> None:
    """fetch(root) into a fresh temporary root, then what it wrote under root/<folder> moved to data_dir/<folder>: a
    failed download creates nothing, not even data_dir."""
    with tempfile.TemporaryDirectory(prefix="aos_bench-download-") as tmp:
        fetch(Path(tmp))
        (data_dir / folder).mkdir(parents=True, exist_ok=True)
        for item in (Path(tmp) / folder).iterdir():
            shutil.move(item, data_dir / folder / item.name)


def _load_intel(dataset: Mapping, data_dir: Path, cache_dir: Path) -> ImageData:
    """Intel scenes from <data_dir>/intel/{seg_train,seg_test}/<class>/*.jpg, squashed to image_size."""
    size = dataset.get("image_size", 64)
    folder = data_dir / "intel"
    train, test = _unnest(folder / "seg_train"), _unnest(folder / "seg_test")
    if not (train.is_dir() and test.is_dir()):
        raise UsageError(
            f"Intel images not found: expected {folder}/seg_train/<class>/*.jpg and "
            f"{folder}/seg_test/<class>/*.jpg; "
            f"download the Kaggle dataset {INTEL_KAGGLE} and unpack it so that seg_train/ and seg_test/ "
            f"are under {folder}, or set data_dir (or AOS_DATA_DIR) to the folder that holds intel/"
        )
    return _image_folder_splits(train, test, (size, size), cache_dir, dataset.get("skip_bad", False))


def _unnest(split: Path) -> Path:
    """The Kaggle archive unpacks as seg_train/seg_train/<class>: accept that as well."""
    inner = split / split.name
    return inner if inner.is_dir() else split


def _load_folder(dataset: Mapping, data_dir: Path, cache_dir: Path) -> ImageData:
    """Your own images (docs/own_data.md): <root>/{train,test}/<class>/*, or <root>/<class>/* with a stratified test
    split drawn here; squashed to image_size, with dataset.channels channels or, when null, those of the images."""
    size = dataset.get("image_size", 64)
    channels, root = dataset.get("channels"), dataset.get("root")
    try:
        data = _folder_splits(Path(root).expanduser(), dataset, (size, size), cache_dir)
    except UsageError as error:
        raise UsageError(f"dataset.root={root}: {error}") from None
    data = _with_channels(data, channels)
    channels = data.train_x.shape[1]
    for key in ("mean", "std"):
        given = dataset.get(key)
        if given is not None and len(given) != channels:
            raise UsageError(f"dataset.{key}={show(given)}: one value per channel, and the images have {channels} (dataset.channels)")
    return data


def _folder_splits(root: Path, dataset: Mapping, size: tuple[int, int], cache_dir: Path) -> ImageData:
    """Both splits of a folder dataset: its train/ and test/ folders, else a stratified split of its class folders."""
    if not root.is_dir():
        raise UsageError(f"no such folder ({root.resolve()}); it must hold <class>/ folders of images, or train/<class>/ and test/<class>/")
    train, test = root / "train", root / "test"
    skip_bad = dataset.get("skip_bad", False)
    folders = _class_folders(root)
    if train.is_dir() and test.is_dir():
        data = _image_folder_splits(train, test, size, cache_dir, skip_bad)
        unused = [f"{name}/" for name in folders if name not in ("train", "test")]  # val/, say: not read, and the test source says so
        return replace(data, test_source=data.test_source + (f" ({', '.join(unused)} not used)" if unused else ""))
    if train.is_dir() or test.is_dir():
        found, lacking = ("train", "test") if train.is_dir() else ("test", "train")
        raise UsageError(f"{root} has {found}/ but no {lacking}/: give both, each with <class>/ folders, or <class>/ folders only")
    _refuse_split_names(root, folders)
    fraction, seed = dataset.get("test_fraction"), dataset.get("split_seed")
    x, y, classes, skipped, left_out = _read_image_folder(root, size, cache_dir, skip_bad)
    train_at, test_at = _stratified_split(y, classes, fraction, seed, root)
    held_out = f"held out from {root}: {fraction:g} of each class (dataset.test_fraction), drawn with dataset.split_seed={seed}"
    return ImageData(x[train_at], y[train_at], x[test_at], y[test_at], classes, tuple(skipped), held_out, left_out)


def _refuse_split_names(root: Path, folders: list[str]) -> None:
    """A UsageError when the folders that would be classes are named as splits: one named as a split alone (val/), or
    two or more with a split word in their names (digits_train/ and digits_test/), which would train a split-vs-split
    classifier."""
    named = [name for name in folders if any(word in SPLIT_WORDS for word in re.split(r"[\s_.-]+", name.lower()))]
    if len(named) >= 2 or any(name.lower() in SPLIT_WORDS for name in named):
        raise UsageError(
            f"{root} holds {', '.join(f'{name}/' for name in named)}, named as splits, not classes: "
            "name them train/ and test/ (each with <class>/ folders), or point dataset.root at one split's folder "
            "to split its classes here"
        )


def _stratified_split(
    y: torch.Tensor, classes: list[str], fraction: float, seed: int, root: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices, each in file order: of a class of n images, min(n - 1, max(1, round(fraction * n))) drawn
    with `seed` for testing, the others for training."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label, name in enumerate(classes):
        members = (y == label).nonzero().flatten()
        if len(members) < 2:
            raise UsageError(
                f"class folder {root / name} has 1 readable image: the test split (dataset.test_fraction={fraction:g}) "
                "needs at least 2 per class, 1 to train on and 1 to test"
            )
        n_test = min(len(members) - 1, max(1, round(fraction * len(members))))
        held = torch.zeros(len(members), dtype=torch.bool)
        held[torch.randperm(len(members), generator=generator)[:n_test]] = True
        train.append(members[~held])
        test.append(members[held])
    return torch.cat(train), torch.cat(test)


def _with_channels(data: ImageData, channels: int | None) -> ImageData:
    """`data` with 1 (grey) or 3 (RGB) channels; None = 1 when every image is grey (R = G = B), else 3."""
    if channels is None:
        channels = 1 if _all_grey(data.train_x) and _all_grey(data.test_x) else 3
    if channels == 3:
        return data
    return replace(data, train_x=_to_grey(data.train_x), test_x=_to_grey(data.test_x))


def _all_grey(x: torch.Tensor) -> bool:
    """Whether every RGB image of x has equal red, green and blue values."""
    return bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())


def _to_grey(x: torch.Tensor) -> torch.Tensor:
    """RGB uint8 images as one channel of torchvision's luma, rounded (so grey images stay exact), converted in chunks."""
    return torch.cat([rgb_to_grayscale(part.float()).round_().to(torch.uint8) for part in x.split(4096)])


def normalisation(dataset: Mapping, train_x: torch.Tensor) -> tuple[list[float], list[float]]:
    """dataset.mean and dataset.std, per channel of [0, 1] pixels; each one that is null measured on the training split."""
    given = (dataset.get("mean"), dataset.get("std"))
    if None not in given:
        return list(given[0]), list(given[1])
    # a histogram of the 256 pixel values per channel: exact, and no float copy of the images
    counts = torch.stack([torch.bincount(train_x[:, c].flatten(), minlength=256) for c in range(train_x.shape[1])]).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = counts @ levels / counts.sum(1)
    std = ((counts * (levels - mean[:, None]) ** 2).sum(1) / counts.sum(1)).sqrt()
    std[std == 0] = 1  # a constant channel (one value in every image) normalises to 0 instead of dividing by zero
    mean, std = (measured.tolist() if value is None else list(value) for value, measured in zip(given, (mean, std), strict=True))
    return mean, std


def _image_folder_splits(train: Path, test: Path, size: tuple[int, int], cache_dir: Path, skip_bad: bool = False) -> ImageData:
    """Both splits of an ImageFolder dataset; the test split must have the train split's classes."""
    train_x, train_y, classes, train_skipped, train_left_out = _read_image_folder(train, size, cache_dir, skip_bad)
    test_x, test_y, test_classes, test_skipped, test_left_out = _read_image_folder(test, size, cache_dir, skip_bad)
    if test_classes != classes:
        raise UsageError(f"class folders differ: {train} has {classes}, {test} has {test_classes}")
    left_out = dict(Counter(train_left_out) + Counter(test_left_out))
    return ImageData(train_x, train_y, test_x, test_y, classes, (*train_skipped, *test_skipped), f"test folder {test}", left_out)


def _class_folders(root: Path) -> list[str]:
    """The sorted names of root's folders that can be classes: not hidden (.git), not __MACOSX."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".") and entry.name != OS_FOLDER)


def _is_os_file(name: str) -> bool:
    """Whether a file name is one an OS leaves beside images: `._<name>` (AppleDouble), .DS_Store, Thumbs.db."""
    return name.startswith("._") or name in OS_FILES


def _list_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]], dict[str, int]]:
    """Sorted class folder names, (path relative to root, label) pairs in sorted order, like ImageFolder, and the
    counts of files left out (OS files, broken links); at least two classes, each with an image file. Symbolic links
    are followed, each folder read once per class (a link loop adds nothing)."""
    classes = _class_folders(root)
    if len(classes) < 2:
        found = f"only one class folder ({classes[0]})" if classes else "no class folders"
        raise UsageError(f"{found} in {root}: a classifier needs at least 2, as {root}/<class>/<image>")
    left_out: Counter[str] = Counter()
    if (root / OS_FOLDER).is_dir():
        left_out[OS_JUNK] += _count_files(root / OS_FOLDER)
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        listed, seen = len(files), set()  # seen: (device, inode) of the folders read
        # os.walk rather than Path.rglob: listing 60k files this way is several times faster.
        for folder, subfolders, names in os.walk(root / name, followlinks=True):
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:  # reached again through a link: a loop or a second path to it
                subfolders.clear()
                continue
            seen.add((stat.st_dev, stat.st_ino))
            for junk in [sub for sub in subfolders if sub == OS_FOLDER or sub.startswith(".")]:
                subfolders.remove(junk)  # not read: __MACOSX/ (counted) and hidden folders (.ipynb_checkpoints/)
                if junk == OS_FOLDER:
                    left_out[OS_JUNK] += _count_files(Path(folder, junk))
            subfolders.sort()
            relative = os.path.relpath(folder, root)
            for file in sorted(names):
                if _is_os_file(file):
                    left_out[OS_JUNK] += 1
                elif not os.path.exists(os.path.join(folder, file)):  # a symbolic link to nothing
                    left_out[BROKEN_LINKS] += 1
                elif os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS:
                    files.append((f"{relative}/{file}".replace(os.sep, "/"), label))
        if len(files) == listed:
            raise UsageError(f"class folder {root / name} holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return classes, files, dict(left_out)


def _count_files(folder: Path) -> int:
    """How many files a folder holds, at any depth (links to folders not followed)."""
    return sum(len(names) for _, _, names in os.walk(folder))


def _cache_path(root: Path, files: list[tuple[str, int]], size: tuple[int, int], cache_dir: Path) -> Path:
    """Cache file named by a hash of everything the decoded tensors depend on."""
    # Sizes and mtimes stand in for the content: a changed, added or removed file gives a new key.
    stats = [_file_stamp(root, relative) for relative, _ in files]
    key = json.dumps([CACHE_FORMAT_VERSION, str(root.resolve()), list(size), stats])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir / f"{root.parent.name}-{root.name}-{size[0]}x{size[1]}-{digest}.pt"


def _file_stamp(root: Path, relative: str) -> tuple[str, int, int]:
    """A file's path relative to root, its size and its mtime in ns."""
    stat = os.stat(os.path.join(root, relative))
    return relative, stat.st_size, stat.st_mtime_ns


def _read_image_folder(
    root: Path, size: tuple[int, int], cache_dir: Path, skip_bad: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str], dict[str, int]]:
    """Images (N, 3, H, W) uint8, labels, classes, skipped unreadable files and the counts of other files left out
    (_list_image_folder) of one ImageFolder split, from the cache when fresh."""
    classes, files, left_out = _list_image_folder(root)
    cache = _cache_path(root, files, size, cache_dir)
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            problem = _cache_mismatch(saved, classes, len(files), size)
        # Any unreadable cache file is simply rebuilt.
        except Exception as error:
            warnings.warn(f"ignoring unreadable cache file {cache}: {_one_line(error)}", stacklevel=2)
        else:
            if problem is None:
                skipped = saved["skipped"]
                if skipped and not skip_bad:
                    raise UsageError(
                        f"cannot decode image {root / skipped[0]} ({len(skipped)} unreadable in {root}); dataset.skip_bad=true leaves them out"
                    )
                _require_readable_classes(root, classes, saved["y"])
                return saved["x"], saved["y"], classes, skipped, left_out
            warnings.warn(f"rebuilding cache file {cache}: {problem}", stacklevel=2)
    paths = [root / relative for relative, _ in files]
    x, kept = _decode_images(paths, size, skip_bad)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)[kept]
    skipped = [relative for (relative, _), ok in zip(files, kept.tolist(), strict=True) if not ok]
    _require_readable_classes(root, classes, y)
    if skipped:
        warnings.warn(f"dataset.skip_bad=true: left out {len(skipped)} unreadable images of {root}, the first {root / skipped[0]}", stacklevel=2)
    _save_cache(cache, {"x": x, "y": y, "classes": classes, "skipped": skipped})
    return x, y, classes, skipped, left_out


def _cache_mismatch(saved: Any, classes: list[str], n_files: int, size: tuple[int, int]) -> str | None:
    """Why a cache file that loaded does not hold its folder's decoded images (cut short, another layout), or None."""
    if not isinstance(saved, dict) or not {"x", "y", "classes", "skipped"} <= saved.keys():
        return "it lacks the keys x, y, classes and skipped"
    x, y, skipped = saved["x"], saved["y"], saved["skipped"]
    if saved["classes"] != classes:
        return f"its classes {saved['classes']} are not the folder's {classes}"
    if len(y) + len(skipped) != n_files or tuple(x.shape) != (len(y), 3, *size) or x.dtype != torch.uint8:
        return (f"it holds {tuple(x.shape)} {x.dtype} images, {len(y)} labels and {len(skipped)} skipped files"
                f" for {n_files} files of {size[0]}x{size[1]}")
    if y.dtype != torch.int64 or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(classes)):
        return f"its labels are not {len(classes)} classes' int64 labels"
    return None


def _require_readable_classes(root: Path, classes: list[str], y: torch.Tensor) -> None:
    """A UsageError naming the first class folder whose every image was unreadable (left out with skip_bad)."""
    counts = torch.bincount(y, minlength=len(classes)).tolist()
    if 0 in counts:
        raise UsageError(f"class folder {root / classes[counts.index(0)]} has no readable image: dataset.skip_bad=true left out all of its files")


def _decode_images(paths: list[Path], size: tuple[int, int], skip_bad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode image files to RGB and resize (antialiased) to size where they differ, as one uint8 tensor; with the mask
    of the files kept (an unreadable file is an error naming it, or with skip_bad left out)."""
    out = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
    kept = torch.ones(len(paths), dtype=torch.bool)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of torchcodec and warns on every call.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        for i, path in enumerate(paths):
            try:
                image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
            except RuntimeError as error:
                if not skip_bad:
                    raise UsageError(f"cannot decode image {path}: {_decoder_reason(error)}; dataset.skip_bad=true leaves such files out") from error
                kept[i] = False
                continue
            if image.ndim == 4:  # an animated GIF: (frames, 3, H, W); its first frame is the image
                image = image[0]
            if tuple(image.shape[-2:]) != size:
                image = resize(image, list(size), antialias=True)
            out[i] = image
    return (out if bool(kept.all()) else out[kept]), kept


def _decoder_reason(error: RuntimeError) -> str:
    """torchvision's decoding error as its reason only: without the `<function>, <source file>:<line>, ` of its build,
    nor its advice on AVIF and HEIC files."""
    reason = re.sub(r"^[\w()]+, \S+:\d+, ", "", _one_line(error))
    return re.sub(r"\s*For avif and heic format.*$", "", reason)


def _save_cache(path: Path, content: dict[str, Any]) -> None:
    """Write content atomically (temp file + rename), warning instead of failing when that is impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        warnings.warn(f"not caching decoded images: cannot write to {path.parent} ({error})", stacklevel=2)
        return
    try:
        # mkstemp creates the file private (0600); a cache shared between users must be readable.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as file:
            torch.save(content, file)
        # os.replace is atomic: parallel jobs see either no cache file or a complete one.
        os.replace(tmp, path)
    # torch.save reports a full disk as RuntimeError, other write failures as OSError; Ctrl-C or SIGTERM leave no half file.
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(error, (OSError, RuntimeError)):
            raise
        warnings.warn(f"not caching decoded images: cannot write {path} ({error})", stacklevel=2)


def _load_synthetic(dataset: Mapping, data_dir: Path, cache_dir: Path) -> ImageData:
    """Separable toy data: one smooth random prototype per class plus Gaussian pixel noise."""
    n_classes = dataset["n_classes"]
    channels = dataset["channels"]
    size = dataset.get("image_size", 64)
    train_per_class = dataset["train_per_class"]
    test_per_class = dataset["test_per_class"]
    seed = dataset["seed"]
    generator = torch.Generator().manual_seed(seed)
    # Upsampled 4x4 patterns give large uniform regions, which a small CNN separates within a few steps.
    coarse = torch.rand((n_classes, channels, 4, 4), generator=generator)
    prototypes = 48 + 160 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    train_x, train_y = _noisy_copies(prototypes, train_per_class, generator)
    test_x, test_y = _noisy_copies(prototypes, test_per_class, generator)
    return ImageData(train_x, train_y, test_x, test_y, [f"c{i}" for i in range(n_classes)], test_source=f"generated: {test_per_class} per class")


def _noisy_copies(
    prototypes: torch.Tensor, per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class noisy uint8 copies of each prototype, with labels in class order."""
    y = torch.arange(len(prototypes)).repeat_interleave(per_class)
    noise = 32 * torch.randn((len(y), *prototypes.shape[1:]), generator=generator)
    return (prototypes[y] + noise).round().clamp(0, 255).to(torch.uint8), y


LOADERS: dict[str, Callable[[Mapping, Path, Path], ImageData]] = {
    "cifar10": _load_cifar10,
    "folder": _load_folder,
    "intel": _load_intel,
    "mnist": _load_mnist,
    "synthetic": _load_synthetic,
}
