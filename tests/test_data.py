"""Tests of aos_bench.data: real datasets where present, small generated image folders otherwise."""

import gzip
import os
import pickle
import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from conftest import DATA, needs
from images import forbid_decoding, intel_cfg, write_image_folder
from omegaconf import OmegaConf
from torchvision.io import write_png

from aos_bench import data
from aos_bench.data import ImageData, default_cache_dir, load_data
from aos_bench.errors import UsageError

# torchvision 0.29 deprecates write_png/decode_image (used here to make and check PNGs) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

def class_counts(y: torch.Tensor) -> list[int]:
    """Number of samples per label."""
    return torch.bincount(y).tolist()


@pytest.fixture
def toy_intel(tmp_path: Path) -> Path:
    """A data_dir holding a tiny Intel-style ImageFolder with non-square 12x20 images."""
    write_image_folder(tmp_path / "data" / "intel" / "seg_train", ["a", "b", "c"], 4, 12, 20)
    write_image_folder(tmp_path / "data" / "intel" / "seg_test", ["a", "b", "c"], 2, 12, 20)
    return tmp_path / "data"


SYNTHETIC = {
    "name": "synthetic",
    "image_size": 16,
    "channels": 1,
    "n_classes": 4,
    "train_per_class": 30,
    "test_per_class": 10,
    "seed": 0,
}


# ---- configuration and missing files ----


@pytest.mark.parametrize(
    ("name", "searched"),
    [("mnist", "MNIST/raw"), ("cifar10", "cifar10"), ("intel", "intel")],
)
def test_missing_files_give_one_line_naming_the_directory(tmp_path: Path, name: str, searched: str) -> None:
    with pytest.raises(UsageError) as error:
        load_data(OmegaConf.create({"name": name, "image_size": 32, "download": False}), tmp_path, tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / searched) in message
    assert "data_dir" in message


def test_mnist_download_failure_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(UsageError) as error:
        load_data(OmegaConf.create({"name": "mnist", "download": True}), tmp_path, tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "download failed" in message and "train-images-idx3-ubyte" in message


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_failed_download_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    dataset = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]

    def cut_off(self) -> None:  # as torchvision's download does offline: its folders made, a file begun, then the error
        folder = Path(getattr(self, "raw_folder", self.root))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "archive.gz").write_bytes(b"cut")
        if name == "mnist":  # MNIST tries each mirror and reports them all, the reason last
            raise RuntimeError("Error downloading archive.gz:\nTried https://mirror/, got:\n<urlopen error [Errno -3] Temporary failure in name resolution>\n")
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(dataset, "download", cut_off)
    with pytest.raises(UsageError) as error:
        load_data(OmegaConf.create({"name": name, "download": True}), tmp_path / "nonexistent" / "dir", tmp_path / "cache")
    assert "\n" not in str(error.value) and "name resolution" in str(error.value)
    assert not (tmp_path / "nonexistent").exists()  # data_dir was not created, nor MNIST/raw in it


def test_a_download_lands_in_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8), torch.tensor([0, 1, 2], dtype=torch.uint8)

    def fetched(self) -> None:  # the four IDX files, as torchvision leaves them after a download
        Path(self.raw_folder).mkdir(parents=True)
        for prefix in ("train", "t10k"):
            for part, tensor in (("images-idx3", images), ("labels-idx1", labels)):
                header = bytes([0, 0, 8, tensor.ndim]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
                Path(self.raw_folder, f"{prefix}-{part}-ubyte").write_bytes(header + tensor.numpy().tobytes())

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fetched)
    loaded = load_data(OmegaConf.create({"name": "mnist", "download": True}), tmp_path / "new" / "data", tmp_path / "cache")
    assert torch.equal(loaded.train_x[:, 0], images) and loaded.test_y.tolist() == [0, 1, 2]
    assert sorted(path.name for path in (tmp_path / "new" / "data" / "MNIST" / "raw").iterdir()) == sorted(data.MNIST_FILES)


def test_cifar10_download_failure_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(UsageError) as error:
        load_data(OmegaConf.create({"name": "cifar10", "download": True}), tmp_path, tmp_path)
    assert "\n" not in str(error.value)
    assert "name resolution" in str(error.value)


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AOS_CACHE_DIR", str(tmp_path / "aos"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "aos"
    monkeypatch.setenv("AOS_CACHE_DIR", "")
    assert default_cache_dir() == tmp_path / "xdg" / "aos_bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "aos_bench"


# ---- synthetic ----


def test_synthetic_shapes_balance_and_determinism(tmp_path: Path) -> None:
    first = load_data(OmegaConf.create(SYNTHETIC), tmp_path, None)
    again = load_data(SYNTHETIC, tmp_path, None)  # a plain mapping works as well
    other = load_data({**SYNTHETIC, "seed": 1}, tmp_path, None)
    assert first.train_x.shape == (120, 1, 16, 16) and first.test_x.shape == (40, 1, 16, 16)
    assert first.train_x.dtype == torch.uint8 and first.train_y.dtype == torch.int64
    assert class_counts(first.train_y) == [30] * 4 and class_counts(first.test_y) == [10] * 4
    assert first.train_y.tolist() == sorted(first.train_y.tolist())
    assert first.classes == ["c0", "c1", "c2", "c3"]
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_x, again.test_x)
    assert not torch.equal(first.train_x, other.train_x)
    assert not list(tmp_path.iterdir())  # needs no files and writes none


def test_synthetic_is_learnable_in_a_few_dozen_steps(tmp_path: Path) -> None:
    # a linear classifier stands in for the small CNN: convolutions are slow on these CPUs, and
    # what a linear model learns in 30 steps a CNN learns too
    images = load_data({**SYNTHETIC, "n_classes": 10, "train_per_class": 50}, tmp_path, tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Linear(16 * 16, 10)
    x, y = images.train_x.flatten(1).float() / 255, images.train_y
    for _ in range(30):
        batch = torch.randint(0, len(y), (64,))
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
    with torch.no_grad():
        predicted = model(images.test_x.flatten(1).float() / 255).argmax(1)
    assert (predicted == images.test_y).float().mean() > 0.5  # chance is 0.1


# ---- image folders and the decode cache (generated files, fast) ----


def test_image_folder_is_resized_labelled_and_cached(toy_intel: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    images = load_data(intel_cfg(8), toy_intel, cache)
    assert images.classes == ["a", "b", "c"]
    assert images.train_x.shape == (12, 3, 8, 8) and images.test_x.shape == (6, 3, 8, 8)
    assert images.train_x.dtype == torch.uint8 and images.train_y.dtype == torch.int64
    assert images.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # the grey PNG comes out with three equal channels
    assert torch.equal(images.train_x[0, 0], images.train_x[0, 1])
    assert len(list(cache.glob("*.pt"))) == 2
    assert not list(cache.glob(".*"))  # no temporary files left behind


def test_second_load_reads_the_cache(toy_intel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_data(intel_cfg(), toy_intel, tmp_path / "cache")
    forbid_decoding(monkeypatch)
    second = load_data(intel_cfg(), toy_intel, tmp_path / "cache")
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert first.classes == second.classes


def test_changed_size_or_file_gives_a_new_cache_file(toy_intel: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_data(intel_cfg(8), toy_intel, cache)
    load_data(intel_cfg(6), toy_intel, cache)
    assert len(list(cache.glob("*.pt"))) == 4
    # overwrite one training image with a black one: its size and mtime change, so the key does
    changed = toy_intel / "intel" / "seg_train" / "b" / "001.png"
    write_png(torch.zeros((3, 12, 20), dtype=torch.uint8), str(changed))
    os.utime(changed, ns=(1, 1))
    images = load_data(intel_cfg(8), toy_intel, cache)
    assert len(list(cache.glob("*.pt"))) == 5
    assert images.train_x[5].max() == 0


def test_unwritable_cache_dir_warns_and_still_loads(toy_intel: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="not caching"):
        images = load_data(intel_cfg(), toy_intel, blocker / "cache")
    assert images.train_x.shape == (12, 3, 8, 8)


def test_default_cache_dir_is_used_and_data_dir_untouched(
    toy_intel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AOS_CACHE_DIR", str(tmp_path / "default"))
    before = sorted(toy_intel.rglob("*"))
    load_data(intel_cfg(), toy_intel, None)
    assert len(list((tmp_path / "default").glob("*.pt"))) == 2
    assert sorted(toy_intel.rglob("*")) == before


def test_kaggle_nested_layout_is_accepted(tmp_path: Path) -> None:
    intel = tmp_path / "intel"
    write_image_folder(intel / "seg_train" / "seg_train", ["x", "y"], 2, 10, 10)
    write_image_folder(intel / "seg_test" / "seg_test", ["x", "y"], 1, 10, 10)
    images = load_data(intel_cfg(10), tmp_path, tmp_path / "cache")
    assert images.classes == ["x", "y"] and images.train_x.shape == (4, 3, 10, 10)


def test_mismatched_test_classes_are_a_usage_error(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "intel" / "seg_train", ["x", "y"], 1, 8, 8)
    write_image_folder(tmp_path / "intel" / "seg_test", ["x", "z"], 1, 8, 8)
    with pytest.raises(UsageError, match="class folders differ"):
        load_data(intel_cfg(8), tmp_path, tmp_path / "cache")


def test_cifar10_image_folder_is_pixel_exact(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "cifar10" / "train", ["airplane", "truck"], 2, 32, 32)
    write_image_folder(tmp_path / "cifar10" / "test", ["airplane", "truck"], 1, 32, 32)
    images = load_data(OmegaConf.create({"name": "cifar10", "image_size": 64}), tmp_path, tmp_path / "cache")
    assert images.train_x.shape == (4, 3, 32, 32)  # image_size is ignored: CIFAR-10 keeps 32x32
    expected = torchvision.io.decode_image(str(tmp_path / "cifar10" / "train" / "truck" / "001.png"))
    assert torch.equal(images.train_x[3], expected)


def test_cifar10_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fake pickled batches in torchvision's format; md5 None makes torchvision only check they exist
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072) % 251
    for name in ["data_batch_1", "test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": rows.astype(np.uint8), "labels": [1, 0]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["airplane", "automobile"]}))
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", [["data_batch_1", None]])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", [["test_batch", None]])
    meta = {"filename": "batches.meta", "key": "label_names", "md5": None}
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta", meta)
    images = load_data(OmegaConf.create({"name": "cifar10", "download": False}), tmp_path, tmp_path / "cache")
    assert images.train_x.shape == (2, 3, 32, 32) and images.train_x.dtype == torch.uint8
    # a CIFAR row is the red plane, then green, then blue, each row-major
    assert torch.equal(images.train_x[1].flatten(), torch.from_numpy(rows[1].astype(np.uint8)))
    assert images.train_y.tolist() == [1, 0] and images.train_y.dtype == torch.int64
    assert images.classes == ["airplane", "automobile"]


# ---- real datasets ----


@pytest.fixture(scope="module")
def cifar10_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decode cache shared by this module's CIFAR-10 tests."""
    return tmp_path_factory.mktemp("cifar10-cache")


@pytest.fixture(scope="module")
def cifar10(cifar10_cache: Path) -> ImageData:
    """Real CIFAR-10, decoded once per test session."""
    return load_data(OmegaConf.create({"name": "cifar10", "download": False}), DATA, cifar10_cache)


@pytest.fixture(scope="module")
def intel(tmp_path_factory: pytest.TempPathFactory) -> ImageData:
    """Real Intel scenes at 32x32 (small, to keep the resize quick), decoded once per test session."""
    return load_data(intel_cfg(32), DATA, tmp_path_factory.mktemp("intel-cache"))


@needs("MNIST")
def test_mnist(tmp_path: Path) -> None:
    images = load_data(OmegaConf.create({"name": "mnist", "download": False}), DATA, tmp_path)
    assert images.train_x.shape == (60000, 1, 28, 28) and images.test_x.shape == (10000, 1, 28, 28)
    assert images.train_x.dtype == torch.uint8 and images.train_y.dtype == torch.int64
    assert class_counts(images.train_y) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert images.classes == [str(i) for i in range(10)]


@needs("MNIST")
def test_mnist_from_gzipped_idx_files_equals_mnist_from_plain_ones(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES:  # gzipped as published: only the .gz files, no plain copy beside them
        with open(DATA / "MNIST" / "raw" / name, "rb") as source, gzip.open(raw / f"{name}.gz", "wb", compresslevel=1) as target:
            shutil.copyfileobj(source, target)
    mnist = OmegaConf.create({"name": "mnist", "download": False})
    packed, plain = load_data(mnist, tmp_path / "data", tmp_path), load_data(mnist, DATA, tmp_path)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert getattr(packed, key).dtype == getattr(plain, key).dtype
        assert torch.equal(getattr(packed, key), getattr(plain, key)), key
    assert packed.classes == plain.classes


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab", "is not an IDX file of unsigned bytes"),
     (b"\x00\x00\x08\x01\x00\x00\x00\x03ab", "is 10 bytes unpacked, but its header's shape [3] needs 11")],
)
def test_bad_gzipped_idx_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(gzip.compress(content))
    with pytest.raises(UsageError) as error:
        load_data(OmegaConf.create({"name": "mnist", "download": False}), tmp_path, tmp_path)
    assert message in str(error.value) and "train-images-idx3-ubyte.gz" in str(error.value) and "\n" not in str(error.value)


@needs("MNIST")
def test_a_truncated_mnist_file_is_one_line_naming_it_its_size_and_the_size_expected(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (raw / name).symlink_to(DATA / "MNIST" / "raw" / name)
    images = raw / "train-images-idx3-ubyte"
    images.unlink()
    images.write_bytes((DATA / "MNIST" / "raw" / images.name).read_bytes()[:1000])  # a download cut short
    with pytest.raises(UsageError) as error:
        load_data(OmegaConf.create({"name": "mnist", "download": False}), tmp_path, tmp_path)
    assert str(error.value) == (
        f"{images} is 1000 bytes, but its header's shape [60000, 28, 28] needs 47040016: "
        "the file is cut short or corrupt; replace it with a fresh copy"
    )


def test_a_file_that_is_not_gzip_is_one_line_naming_it(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(b"plain bytes")
    with pytest.raises(UsageError, match="cannot read .*train-images-idx3-ubyte.gz"):
        load_data(OmegaConf.create({"name": "mnist", "download": False}), tmp_path, tmp_path)


@needs("cifar10")
def test_cifar10_image_folder(cifar10: ImageData) -> None:
    assert cifar10.train_x.shape == (50000, 3, 32, 32) and cifar10.test_x.shape == (10000, 3, 32, 32)
    assert cifar10.train_x.dtype == torch.uint8 and cifar10.train_y.dtype == torch.int64
    assert class_counts(cifar10.train_y) == [5000] * 10 and class_counts(cifar10.test_y) == [1000] * 10
    assert cifar10.classes[:2] == ["airplane", "automobile"] and len(cifar10.classes) == 10


@needs("cifar10")
def test_cifar10_reload_uses_the_cache(
    cifar10: ImageData, cifar10_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_decoding(monkeypatch)
    again = load_data(OmegaConf.create({"name": "cifar10", "download": False}), DATA, cifar10_cache)
    assert torch.equal(again.train_x, cifar10.train_x) and torch.equal(again.test_y, cifar10.test_y)


@needs("intel")
def test_intel(intel: ImageData) -> None:
    assert intel.train_x.shape == (14033, 3, 32, 32) and intel.test_x.shape == (3000, 3, 32, 32)
    assert intel.train_x.dtype == torch.uint8 and intel.train_y.dtype == torch.int64
    assert class_counts(intel.train_y) == [2190, 2271, 2404, 2512, 2274, 2382]
    assert intel.classes == ["buildings", "forest", "glacier", "mountain", "sea", "street"]
