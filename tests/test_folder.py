"""dataset=folder: a user's own image folders as a dataset, under every imbalance, in the compare preset and its report."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from conftest import ROOT, make_config
from images import forbid_decoding
from omegaconf import OmegaConf
from PIL import Image
from sweeps import copy_store, stored, sweep_cli
from torchvision.io import decode_image, read_file, write_png

from aos_bench import report
from aos_bench.checks import validate
from aos_bench.data import load_data, normalisation
from aos_bench.errors import UsageError
from aos_bench.imbalance import make_subset
from aos_bench.job import prepare
from aos_bench.methods import METHODS
from aos_bench.report import figures, paper
from aos_bench.report.runs import METHODS as PAPER_METHODS
from aos_bench.report.runs import per_seed, sweep_runs
from aos_bench.summary import data_lines, data_record
from aos_bench.tracking import ensure_experiment

# torchvision 0.29 deprecates write_png/decode_image (used here to make and check PNGs) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def write_classes(root: Path, sizes: dict[str, int], grey: bool = False, seed: int = 0) -> None:
    """sizes[name] random 6x6 PNGs (grey or RGB, each different) under root/<name>/."""
    generator = torch.Generator().manual_seed(seed)
    for name, size in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(size):
            image = torch.randint(0, 256, (1 if grey else 3, 6, 6), dtype=torch.uint8, generator=generator)
            write_png(image, str(root / name / f"{i:03d}.png"))


def folder(root: Path, **options: object) -> dict:
    """conf/dataset/folder.yaml as written, pointed at root, for 6 px images, with `options` on top."""
    defaults = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "dataset" / "folder.yaml"))
    return defaults | {"root": str(root), "image_size": 6} | options


def by_content(x: torch.Tensor) -> list[bytes]:
    """Each image's bytes, to compare sets of images whatever their order."""
    return [bytes(image.numpy()) for image in x]


def labels_of_files(root: Path, classes: list[str]) -> dict[bytes, int]:
    """Every PNG under root/<class>/ decoded, as its bytes -> the label of its folder."""
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((root / name).glob("*.png"))]
    return {bytes(decode_image(str(path)).numpy()): label for path, label in files}


# ---- layouts, channels, normalisation and the cache ----


def test_train_and_test_folders_give_sorted_classes_exact_counts_and_the_files_pixels(tmp_path):
    write_classes(tmp_path / "mine" / "train", {"owl": 3, "cat": 9, "dog": 6})
    write_classes(tmp_path / "mine" / "test", {"owl": 2, "cat": 1, "dog": 2}, seed=1)
    images = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    assert images.classes == ["cat", "dog", "owl"]  # the folder names, sorted
    assert torch.bincount(images.train_y).tolist() == [9, 6, 3] and torch.bincount(images.test_y).tolist() == [1, 2, 2]
    assert images.train_x.shape == (18, 3, 6, 6) and images.train_x.dtype == torch.uint8
    assert torch.equal(images.train_x[9], decode_image(str(tmp_path / "mine" / "train" / "dog" / "000.png")))
    assert load_data(folder(tmp_path / "mine", image_size=4), tmp_path, tmp_path / "cache").test_x.shape == (5, 3, 4, 4)


def test_one_class_folder_is_split_per_class_reproducibly_from_split_seed(tmp_path):
    write_classes(tmp_path / "mine", {"a": 10, "b": 5, "c": 2})
    first = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    # of a class of n images, min(n - 1, max(1, round(0.2 n))) are held out for testing: 2 of 10, 1 of 5, 1 of 2
    assert torch.bincount(first.test_y).tolist() == [2, 1, 1] and torch.bincount(first.train_y).tolist() == [8, 4, 1]
    files = labels_of_files(tmp_path / "mine", first.classes)
    train, test = by_content(first.train_x), by_content(first.test_x)
    assert sorted(train + test) == sorted(files) and not set(train) & set(test)  # every file once, in one split
    assert [files[image] for image in train + test] == first.train_y.tolist() + first.test_y.tolist()  # in its folder's class
    again = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "another-cache")  # decoded anew
    assert torch.equal(again.test_x, first.test_x) and torch.equal(again.train_x, first.train_x)
    other = load_data(folder(tmp_path / "mine", split_seed=1), tmp_path, tmp_path / "cache")
    assert torch.bincount(other.test_y).tolist() == [2, 1, 1] and set(by_content(other.test_x)) != set(test)
    half = load_data(folder(tmp_path / "mine", test_fraction=0.5), tmp_path, tmp_path / "cache")
    assert torch.bincount(half.test_y).tolist() == [5, 2, 1]  # round(2.5) = 2: Python's round, half to even


def test_channels_come_from_the_images_unless_dataset_channels_sets_them(tmp_path):
    write_classes(tmp_path / "grey", {"a": 3, "b": 3}, grey=True)
    write_classes(tmp_path / "rgb", {"a": 3, "b": 3})
    grey = load_data(folder(tmp_path / "grey"), tmp_path, tmp_path / "cache")
    files = labels_of_files(tmp_path / "grey", grey.classes)  # grey PNGs decode to one channel
    assert grey.train_x.shape[1] == 1 and sorted(by_content(torch.cat([grey.train_x, grey.test_x]))) == sorted(files)
    as_rgb = load_data(folder(tmp_path / "grey", channels=3), tmp_path, tmp_path / "cache")
    assert as_rgb.train_x.shape[1] == 3 and torch.equal(as_rgb.train_x, grey.train_x.expand(-1, 3, -1, -1))
    rgb = load_data(folder(tmp_path / "rgb"), tmp_path, tmp_path / "cache")
    assert rgb.train_x.shape[1] == 3
    forced = load_data(folder(tmp_path / "rgb", channels=1), tmp_path, tmp_path / "cache")
    luma = (rgb.train_x.double() * torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert forced.train_x.shape[1] == 1 and (forced.train_x.double() - luma).abs().max() <= 0.5 + 1e-4  # rounded luma


def test_mean_and_std_are_measured_on_the_training_split_unless_given(tmp_path):
    write_classes(tmp_path / "mine", {"a": 6, "b": 4})
    images = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    mean, std = normalisation(folder(tmp_path / "mine"), images.train_x)
    pixels = images.train_x.double() / 255
    assert mean == pytest.approx(pixels.mean((0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std((0, 2, 3), correction=0).tolist(), abs=1e-12)
    assert normalisation(folder(tmp_path / "mine", mean=[0.5, 0.4, 0.3]), images.train_x) == ([0.5, 0.4, 0.3], std)
    assert normalisation(make_config("dataset=mnist").dataset, images.train_x) == ([0.1307], [0.3081])  # a built-in's own


def test_a_constant_channel_gets_std_1_not_0(tmp_path):
    write_classes(tmp_path / "mine", {"a": 3, "b": 3})
    images = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    images.train_x[:, 2] = 7  # no blue but 7 in any image: a std of 0 would turn every input into NaN
    mean, std = normalisation(folder(tmp_path / "mine"), images.train_x)
    assert mean[2] == pytest.approx(7 / 255) and std[2] == 1 and 0 < std[0] < 1


def test_the_decoded_images_are_cached_as_for_the_built_in_folders(tmp_path, monkeypatch):
    write_classes(tmp_path / "mine", {"a": 4, "b": 3})
    first = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    assert [path.name.startswith(f"{tmp_path.name}-mine-6x6-") for path in (tmp_path / "cache").glob("*.pt")] == [True]
    forbid_decoding(monkeypatch)
    second = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    assert torch.equal(second.train_x, first.train_x) and torch.equal(second.test_y, first.test_y)


def test_a_split_folder_besides_train_and_test_is_named_as_not_used(tmp_path):
    for split in ("train", "test", "val"):
        write_classes(tmp_path / "mine" / split, {"a": 2, "b": 2}, seed=len(split))
    images = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    assert images.test_source == f"test folder {tmp_path}/mine/test (val/ not used)"
    assert torch.bincount(images.train_y).tolist() == [2, 2] and torch.bincount(images.test_y).tolist() == [2, 2]


def test_a_class_whose_name_holds_a_split_word_is_still_a_class(tmp_path):
    write_classes(tmp_path / "lab", {"test_tube": 3, "flask": 3})  # one such name, not a split word alone: a class
    assert load_data(folder(tmp_path / "lab"), tmp_path, tmp_path / "cache").classes == ["flask", "test_tube"]


def test_skip_bad_leaves_unreadable_files_out_and_counts_them(tmp_path):
    write_classes(tmp_path / "mine", {"a": 4, "b": 4})
    (tmp_path / "mine" / "b" / "001.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="left out 1 unreadable images"):
        images = load_data(folder(tmp_path / "mine", skip_bad=True), tmp_path, tmp_path / "cache")
    assert images.skipped == ("b/001.png",)
    assert torch.bincount(torch.cat([images.train_y, images.test_y])).tolist() == [4, 3]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("dataset.channels=2", "dataset.channels=2: 1 (grey) or 3 (RGB), or null (folder: 1 if every image is grey, else 3)"),
        ("dataset.test_fraction=1", "dataset.test_fraction=1: a number in (0, 1) (fraction of each class held out for testing)"),
        ("dataset.split_seed=-1", "dataset.split_seed=-1: a whole number >= 0"),
        ("dataset.natural_minority=yes", "dataset.natural_minority=yes: one of: true, false"),
    ],
)
def test_bad_folder_options_name_the_key_the_value_and_what_is_allowed(override, line):
    with pytest.raises(UsageError) as error:
        validate(make_config("dataset=folder", "dataset.root=my_data", override))
    assert str(error.value) == line


def test_a_mean_or_std_needs_one_value_per_channel(tmp_path):
    write_classes(tmp_path / "mine", {"a": 3, "b": 3})
    with pytest.raises(UsageError) as error:
        load_data(folder(tmp_path / "mine", mean=[0.5]), tmp_path, tmp_path / "cache")
    assert str(error.value) == "dataset.mean=[0.5]: one value per channel, and the images have 3 (dataset.channels)"


def test_links_os_files_and_animated_gifs_are_read_as_a_user_means_them(tmp_path):
    write_classes(tmp_path / "mine", {"a": 3, "b": 3})
    a, b = tmp_path / "mine" / "a", tmp_path / "mine" / "b"
    (a / "loop").symlink_to(a)  # a link loop: each image must count once, not once per lap
    (a / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link
    (b / "more").symlink_to(tmp_path / "elsewhere")  # a link to a folder outside, followed
    write_classes(tmp_path / "elsewhere", {"x": 2}, seed=2)
    (a / "._000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS metadata of 000.png
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (b / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "mine" / "__MACOSX" / "a").mkdir(parents=True)  # what a zip made on a Mac unpacks beside the classes
    (tmp_path / "mine" / "__MACOSX" / "a" / "._000.png").write_bytes(b"\x00\x05\x16\x07")
    frames = [Image.new("RGB", (6, 6), (200 * i, 40, 0)) for i in range(3)]
    frames[0].save(b / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    images = load_data(folder(tmp_path / "mine", test_fraction=0.3), tmp_path, tmp_path / "cache")
    assert images.classes == ["a", "b"]  # __MACOSX is not a class
    assert torch.bincount(torch.cat([images.train_y, images.test_y])).tolist() == [3, 3 + 2 + 1]
    assert images.left_out == {"OS files (__MACOSX/, ._*, .DS_Store, Thumbs.db)": 4, "broken links": 1}
    first_frame = torch.tensor([0, 40, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 6, 6)
    assert any(torch.equal(image, first_frame) for image in torch.cat([images.train_x, images.test_x]))
    record = data_record("folder", images, make_subset(images.train_y, images.classes, {"kind": "none"}, 0))
    assert data_lines(record)[-1] == "  left out: 4 OS files (__MACOSX/, ._*, .DS_Store, Thumbs.db), 1 broken links"


def test_a_cache_file_cut_short_is_rebuilt(tmp_path):
    write_classes(tmp_path / "mine", {"a": 4, "b": 3})
    first = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.pt")
    saved = torch.load(cache, weights_only=True)
    torch.save(saved | {"x": saved["x"][:-2]}, cache)  # loads, but holds 2 images fewer than labels
    with pytest.warns(UserWarning, match=r"rebuilding cache file .*: it holds \(5, 3, 6, 6\) torch.uint8 images, 7 labels"):
        again = load_data(folder(tmp_path / "mine"), tmp_path, tmp_path / "cache")
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.test_x, first.test_x)
    assert torch.load(cache, weights_only=True)["x"].shape[0] == 7  # the rebuilt file


# ---- the imbalance on top ----


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train/test folder whose training split is already imbalanced: 12, 9, 6 and 5 images."""
    root = tmp_path_factory.mktemp("four") / "mine"
    write_classes(root / "train", {"a": 12, "b": 9, "c": 6, "d": 5})
    write_classes(root / "test", {"a": 1, "b": 1, "c": 1, "d": 1}, seed=1)
    return root


@pytest.mark.parametrize(
    ("overrides", "sizes", "minority"),
    [
        # the folder's own sizes; minority = outnumbered more than 1.5 times by the largest: 12 > 1.5 x 6, not 1.5 x 9
        (["imbalance=none"], [12, 9, 6, 5], [2, 3]),
        (["imbalance=none", "dataset.minority_rho=1"], [12, 9, 6, 5], [1, 2, 3]),  # every class smaller than the largest
        (["imbalance=none", "dataset.minority_classes=[b,3]"], [12, 9, 6, 5], [1, 3]),  # named, by name or index
        (["imbalance=none", "dataset.natural_minority=false"], [12, 9, 6, 5], []),
        # n_max = the smallest class, 5; n_min = round(5 / 5) = 1
        (["imbalance=step", "imbalance.mu=0.5", "imbalance.rho=5", "imbalance.minority=first"], [1, 1, 5, 5], [0, 1]),
        (["imbalance=linear", "imbalance.rho=5", "imbalance.minority=last"], [5, 4, 2, 1], [1, 2, 3]),  # round(1 + 4 i / 3)
        (["imbalance=exp", "imbalance.rho=5", "imbalance.minority=first"], [1, 2, 3, 5], [0, 1, 2]),  # round(5 * 5^(-i / 3))
    ],
)
def test_exact_class_counts_under_each_imbalance(four_classes, tmp_path, overrides, sizes, minority):
    cfg = make_config("dataset=folder", f"dataset.root={four_classes}", "dataset.image_size=6", f"cache_dir={tmp_path}", *overrides)
    images, subset = prepare(cfg)
    assert subset.sizes == sizes and subset.minority_classes == minority
    assert torch.bincount(images.train_y[subset.indices], minlength=4).tolist() == sizes
    assert len(set(subset.indices.tolist())) == len(subset.indices)  # no image drawn twice


def test_natural_minority_leaves_near_equal_classes_majority_and_logs_its_rule(tmp_path):
    sizes = {f"c{i}": n for i, n in enumerate([146, 145, 144, 142, 141, 140, 139, 15, 15, 15])}  # seven near-equal, three small
    write_classes(tmp_path / "mine" / "train", sizes)
    write_classes(tmp_path / "mine" / "test", dict.fromkeys(sizes, 1), seed=1)
    cfg = make_config("dataset=folder", f"dataset.root={tmp_path}/mine", "dataset.image_size=6", f"cache_dir={tmp_path}", "imbalance=none")
    _, subset = prepare(cfg)
    assert subset.minority_classes == [7, 8, 9]  # not the classes of 139 to 145 images
    assert subset.minority_rule == "the largest class (146 images) has more than dataset.minority_rho=1.5 times its images"
    cfg.dataset.minority_rho = 1  # the rule before: every class smaller than the largest
    assert prepare(cfg)[1].minority_classes == [1, 2, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["dataset.minority_classes=[a,b,c,d]"], "dataset.minority_classes names all 4 classes: leave at least one majority class"),
        (["dataset.minority_classes=[owl]"], "dataset.minority_classes has 'owl': allowed are indices 0..3 or names ['a', 'b', 'c', 'd']"),
        (
            ["dataset.minority_classes=[a]", "imbalance=step"],
            "dataset.minority_classes is for imbalance=none (a split at its own sizes); imbalance=step makes its own "
            "minority classes: set imbalance.minority instead",
        ),
        (["dataset.minority_rho=0.5"], "dataset.minority_rho=0.5: a number >= 1 (a class is minority when the largest class has more than minority_rho times its images)"),
    ],
)
def test_a_bad_minority_override_is_one_line(four_classes, tmp_path, overrides, line):
    cfg = make_config("dataset=folder", f"dataset.root={four_classes}", "dataset.image_size=6", f"cache_dir={tmp_path}", "imbalance=none", *overrides)
    with pytest.raises(UsageError) as error:
        validate(cfg)
        prepare(cfg)
    assert str(error.value) == line


# ---- bad folders: one line each, exit code 2, before any training ----

# Runs `python -m aos_bench` once per case in one process (torch loads once): prints {case: [exit code, stderr]}.
DRIVER = """
import contextlib, io, json, runpy, sys
results = {}
for name, args in json.loads(sys.argv[1]).items():
    sys.argv = ["aos_bench", *args]
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        try:
            runpy.run_module("aos_bench", run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code
    results[name] = [code, stderr.getvalue()]
print(json.dumps(results))
"""


def bad_folders(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad folder of docs/own_data.md, built under tmp: the overrides that point a run at it, and its one line."""
    images = ".gif, .jpeg, .jpg, .png, .webp"
    (tmp / "loose").mkdir()
    write_png(torch.zeros((3, 6, 6), dtype=torch.uint8), str(tmp / "loose" / "000.png"))  # images, but no class folders
    write_classes(tmp / "textonly", {"a": 3})
    (tmp / "textonly" / "b").mkdir()
    (tmp / "textonly" / "b" / "notes.txt").write_text("no image here")
    write_classes(tmp / "allbroken", {"a": 3, "b": 2})
    for path in (tmp / "allbroken" / "b").iterdir():
        path.write_bytes(b"broken")
    write_classes(tmp / "lone", {"a": 3, "b": 1})
    write_classes(tmp / "small", {"a": 5, "b": 3})  # training split: 4 and 2 images
    write_classes(tmp / "differ" / "train", {"a": 2, "b": 2})
    write_classes(tmp / "differ" / "test", {"a": 1, "c": 1})
    write_classes(tmp / "half" / "train", {"a": 2, "b": 2})
    write_classes(tmp / "single", {"a": 4})
    write_classes(tmp / "unreadable", {"a": 3, "b": 3})
    (tmp / "unreadable" / "b" / "001.png").write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match="/__w/vision/"):  # torchvision's reason names a file of its build
        decode_image(read_file(str(tmp / "unreadable" / "b" / "001.png")))
    for name in ("digits_train", "digits_test"):  # splits under other names: not a 2-class dataset
        write_classes(tmp / "renamed" / name, {"0": 3, "1": 3}, seed=len(name))
    write_classes(tmp / "spelled", {"training": 3, "testing": 3})
    write_classes(tmp / "withval", {"cat": 3, "dog": 3, "val": 3})
    splits = "named as splits, not classes: name them train/ and test/ (each with <class>/ folders), or point dataset.root at one split's folder to split its classes here"
    return {
        "folders named as splits": (
            [f"dataset.root={tmp}/renamed"], f"dataset.root={tmp}/renamed: {tmp}/renamed holds digits_test/, digits_train/, {splits}"
        ),
        "training and testing": (
            [f"dataset.root={tmp}/spelled"], f"dataset.root={tmp}/spelled: {tmp}/spelled holds testing/, training/, {splits}"
        ),
        "a val folder among the classes": (
            [f"dataset.root={tmp}/withval"], f"dataset.root={tmp}/withval: {tmp}/withval holds val/, {splits}"
        ),
        "root not set": ([], "dataset.root: Missing mandatory value: dataset.root"),
        "missing root": (
            [f"dataset.root={tmp}/nowhere"],
            f"dataset.root={tmp}/nowhere: no such folder ({tmp}/nowhere); it must hold <class>/ folders of images, "
            "or train/<class>/ and test/<class>/",
        ),
        "no class folders": (
            [f"dataset.root={tmp}/loose"],
            f"dataset.root={tmp}/loose: no class folders in {tmp}/loose: a classifier needs at least 2, as {tmp}/loose/<class>/<image>",
        ),
        "a class folder without images": (
            [f"dataset.root={tmp}/textonly"], f"dataset.root={tmp}/textonly: class folder {tmp}/textonly/b holds no image ({images})"
        ),
        "a class folder without readable images": (
            [f"dataset.root={tmp}/allbroken", "dataset.skip_bad=true"],
            f"dataset.root={tmp}/allbroken: class folder {tmp}/allbroken/b has no readable image: dataset.skip_bad=true left out all of its files",
        ),
        "too few images for the split": (
            [f"dataset.root={tmp}/lone"],
            f"dataset.root={tmp}/lone: class folder {tmp}/lone/b has 1 readable image: the test split (dataset.test_fraction=0.2) "
            "needs at least 2 per class, 1 to train on and 1 to test",
        ),
        "too few images for the imbalance": (
            [f"dataset.root={tmp}/small", "imbalance=step", "imbalance.n_max=3"],
            "imbalance.n_max=3 must be between 1 and the smallest class size 2",
        ),
        "train and test classes differ": (
            [f"dataset.root={tmp}/differ"],
            f"dataset.root={tmp}/differ: class folders differ: {tmp}/differ/train has ['a', 'b'], {tmp}/differ/test has ['a', 'c']",
        ),
        "train without test": (
            [f"dataset.root={tmp}/half"],
            f"dataset.root={tmp}/half: {tmp}/half has train/ but no test/: give both, each with <class>/ folders, or <class>/ folders only",
        ),
        "a single class": (
            [f"dataset.root={tmp}/single"],
            f"dataset.root={tmp}/single: only one class folder (a) in {tmp}/single: a classifier needs at least 2, as {tmp}/single/<class>/<image>",
        ),
        "an unreadable file": (
            [f"dataset.root={tmp}/unreadable"],
            f"dataset.root={tmp}/unreadable: cannot decode image {tmp}/unreadable/b/001.png: Unsupported image file. "
            "Only jpeg, png, webp and gif are currently supported.; dataset.skip_bad=true leaves such files out",
        ),
    }


def test_every_bad_folder_stops_the_command_with_its_one_line_and_exit_code_2(tmp_path, env):
    cases = bad_folders(tmp_path)
    common = ["dataset=folder", "train=smoke", f"cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/out"]
    runs = {name: [*common, *args] for name, (args, _) in cases.items()}
    sweep = ["-m", "experiment=compare", "method=base,aos", "seed=0", "dataset=folder", f"dataset.root={tmp_path}/single"]  # 2 jobs
    runs["a sweep"] = [*sweep, f"hydra.sweep.dir={tmp_path}/multi"]
    command = [sys.executable, "-c", DRIVER, json.dumps(runs)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    sweep_code, sweep_line = got.pop("a sweep")
    assert got == {name: [2, f"aos_bench: {line}\n"] for name, (_, line) in cases.items()}
    assert sweep_code == 2 and sweep_line.count("\n") == 1, sweep_line  # the sweep checks every job before the first trains
    assert sweep_line.startswith(f"aos_bench: {cases['a single class'][1]} (job: method=base seed=0 ")
    assert sweep_line.endswith("; no job of this sweep has run)\n")
    assert not (tmp_path / "mlruns").exists(), "a run was created for a bad folder"


# ---- the compare preset and the reports ----


def test_compare_preset_runs_every_method_on_a_folder_and_writes_the_methods_table(tmp_path, env, empty_store):
    write_classes(tmp_path / "mine", {"cat": 12, "dog": 8, "owl": 5})  # training split: 10, 6 and 4 images
    copy_store(empty_store, tmp_path / "mlruns")
    shrink = ["dataset.image_size=16", "train=smoke", "train.max_steps=2", "seed=0"]  # 2 optimizer steps a job, 1 seed
    result = sweep_cli(tmp_path, env, "experiment=compare", "dataset=folder", f"dataset.root={tmp_path}/mine", *shrink)
    assert result.returncode == 0, result.stderr[-3000:]
    parents, children = stored(tmp_path)
    assert parents["tags.preset"].tolist() == ["compare"] and (children["status"] == "FINISHED").all()
    assert sorted(children["params.method.name"]) == sorted(METHODS)  # every method
    assert set(children["params.imbalance.kind"]) == {"none"} and set(children["params.dataset.split_seed"]) == {"0"}
    assert children["params.dataset.train_mean"].notna().all()  # the measured normalisation is logged
    counts = mlflow.artifacts.load_dict(f"{children['artifact_uri'].iloc[0]}/class_counts.json")
    assert counts["classes"] == ["cat", "dog", "owl"] and counts["imbalanced"] == [10, 6, 4] and counts["minority_classes"] == [1, 2]
    assert children["metrics.test_f1_minority"].notna().all()
    table = pd.read_csv(tmp_path / "multirun" / "compare.csv")  # the methods layout, chosen by the preset
    assert sorted(table["method"]) == sorted(METHODS) and table["seeds"].eq(1).all() and set(table["dataset"]) == {"folder"}
    assert table["mu"].isna().all() and table["rho"].isna().all()
    assert table["rank"].isna().all()  # 2 optimizer steps measure no method: trimmed runs are never ranked
    text = (tmp_path / "multirun" / "compare.md").read_text()
    assert "TRIMMED: 10 of 10 runs stopped at train.max_steps (2 optimizer steps)" in text
    assert "| row | BASE | ROS | AOS | RUS | SMOTE | Reweight | Focal | LDAM-DRW | Bal. softmax | Threshold |" in text
    aos = table.set_index("method").loc["aos"]
    base = table.set_index("method").loc["base"]
    assert f"| folder none | {base['mean']:.2f} |" in text and f"| {aos['mean']:.2f} |" in text


def log_folder_run(parent: str, method: str, seed: int, f1: float) -> None:
    """A finished job of dataset=folder at imbalance=none (no mu, no rho), logged as job.run logs one."""
    with mlflow.start_run(tags={"mlflow.parentRunId": parent, "config_hash": f"{method}-{seed}"}):
        mlflow.log_params({"dataset.name": "folder", "imbalance.kind": "none", "method.name": method, "method.eps": 0.1, "seed": seed})
        mlflow.log_params({"data_seed": seed, "recipe.name": "paper", "env.threads": 1})
        mlflow.log_metrics({"test_f1_macro": f1, "train_steps": 10})
        mlflow.log_text("class,precision,recall,f1,support\ncat,1,1,90,2\nowl,1,1,40,1\n", "per_class.csv")
        mlflow.log_dict({"classes": ["cat", "owl"], "minority_classes": [1]}, "class_counts.json")


def test_paper_layout_on_a_folder_has_no_paper_column(tmp_path, empty_store):
    uri = copy_store(empty_store, tmp_path)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "aos_bench"))
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(mlflow.get_experiment_by_name("aos_bench").experiment_id, tags={"sweep_key": "k"}).info.run_id
    for offset, method in enumerate(PAPER_METHODS):
        for seed in (0, 1):
            log_folder_run(parent, method, seed, 60.0 + 10 * offset + seed)
    client.set_terminated(parent, "FINISHED")
    paths = report.write_report(uri, "aos_bench", parent, tmp_path / "results")
    table = pd.read_csv(paths[1]).set_index("method")
    assert table["paper"].isna().all() and table.loc["aos", ["mean", "seeds"]].tolist() == [80.5, 2]
    text = paths[0].read_text()
    assert "| dataset | mu | rho | eps | method | F1 mean | F1 std | seeds | steps/run | note |" in text  # no paper, no ours − paper
    assert "| folder |  |  | 0.1 | AOS | 80.50 | 0.71 | 2 | 10 |  |" in text and "no paper values" in text
    assert "| dataset | mu | rho | AOS − ROS | p (vs ROS) | AOS − BASE | p (vs BASE) | ours: best to worst |" in text
    assert "| folder |  |  | +10.00 (n=2) | 0.500 | +20.00 (n=2) | 0.500 | AOS > ROS > BASE |" in text
    runs = sweep_runs(mlflow.get_experiment_by_name("aos_bench").experiment_id, parent)
    cells = paper.cells(per_seed(runs), "none")
    classes, minority, seed = figures.per_class(runs, figures.per_class_row(cells, None))
    figure = figures.figure(cells, runs, classes, minority, ("left", "right"))
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["folder"] and minority == ["owl"]  # one row


# ---- what a run resolved, printed and logged before it trains ----


def folder_cli(tmp_path: Path, env: dict[str, str], root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m aos_bench dataset=folder dataset.root=ROOT train=smoke ARGS` for 2 steps on 16 px images, started in
    tmp_path (store tmp_path/mlruns)."""
    shrink = ["train=smoke", "train.max_steps=2", "dataset.image_size=16", f"cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/out"]
    command = [sys.executable, "-m", "aos_bench", "dataset=folder", f"dataset.root={root}", *shrink, *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_prints_and_logs_its_classes_counts_minority_rule_and_test_source_before_training(tmp_path, env, empty_store):
    names = [f"{word}_photos" for word in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    write_classes(tmp_path / "mine", dict(zip(names, [10, 10, 10, 10, 10, 10, 10, 10, 4, 3], strict=True)))
    copy_store(empty_store, tmp_path / "mlruns")
    result = folder_cli(tmp_path, env, tmp_path / "mine", "imbalance=none")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.splitlines()
    loading = next(i for i, line in enumerate(out) if line.endswith(f"- loading folder {tmp_path}/mine"))
    header = next(i for i, line in enumerate(out) if "- data: folder, 10 classes; test split: held out from" in line)
    training = next(i for i, line in enumerate(out) if "epoch 1/" in line)
    assert loading < header < training
    assert out[header].endswith(f"held out from {tmp_path}/mine: 0.2 of each class (dataset.test_fraction), drawn with dataset.split_seed=0")
    table = out[header + 1 : header + 7]  # two blocks of three rows: 10 names of 15 characters do not fit in 100
    assert all(len(line) <= 100 for line in table), table
    assert [line.split()[0] for line in table] == ["class", "train", "test"] * 2
    cells = {row: [] for row in ("class", "train", "test")}
    for line in table:
        cells[line.split()[0]] += line.split()[1:]
    # of 10 images 2 are held out, of 4 and of 3 one: round(0.2 n), at least 1
    assert cells["train"] == ["8"] * 8 + ["3", "2"] and cells["test"] == ["2"] * 8 + ["1", "1"]
    assert cells["class"] == names[:8] + ["ship_photos*", "truck_photos*"]
    assert out[header + 7].startswith("  minority (*): ship_photos, truck_photos; rule: ")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = mlflow.search_runs(experiment_names=["aos_bench"]).iloc[0]
    assert run["params.data.test_source"] == out[header].split("test split: ")[1]
    counts = mlflow.artifacts.load_dict(f"{run['artifact_uri']}/class_counts.json")
    assert counts["imbalanced"] == [8] * 8 + [3, 2] and counts["test"] == [2] * 8 + [1, 1] and counts["minority_classes"] == [8, 9]
    assert counts["test_source"] == run["params.data.test_source"] and counts["minority_rule"] == run["params.data.minority_rule"]
