"""The fast training path is the plain one, only faster: same images per epoch, same AOS draws for a seed."""

import hashlib
import subprocess
import sys

import pytest
import torch
from conftest import DATA, ROOT, fit_config, make_config, needs

from aos_bench import train
from aos_bench.data import load_data
from aos_bench.errors import UsageError
from aos_bench.imbalance import make_subset
from aos_bench.methods import Method, Perturb, adversarial_minority, get_method, minority_draw, random_oversample
from aos_bench.models import build_model
from aos_bench.runtime import cpu_kind

sys.path.insert(0, str(ROOT / "scripts"))
import bench


def image_keys(images: torch.Tensor) -> list[bytes]:
    """Sorted raw bytes of uint8 images: equal lists = equal multisets of images."""
    return sorted(image.numpy().tobytes() for image in images)


def run_fit(cfg, x: torch.Tensor, y: torch.Tensor, minority: list[int], method: Method, seed: int) -> train.RunStats:
    """fit() a fresh model of the config on (x, y)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, x.shape[1:], int(y.max()) + 1, cfg.dataset.mean, cfg.dataset.std)
    model = model.to(x.device, memory_format=torch.channels_last)
    return fit_config(model, cfg, x, y, minority, seed, method)


@needs("MNIST")
@pytest.mark.parametrize("method", ["base", "ros"])
def test_an_epoch_visits_the_same_images_as_the_reference_dataloader(method, monkeypatch):
    cfg = make_config(
        f"data_dir={DATA}", f"method={method}", "imbalance.n_max=40", "train.epoch_size=method", "train.epochs=1",
        "train.batch_size=32", "train.device=cpu",
    )
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
    x, y = data.train_x[subset.indices], data.train_y[subset.indices]
    visited, epoch_batches = [], train.epoch_batches

    def recording(*args) -> tuple[torch.Tensor, ...]:
        visited.extend(batches := epoch_batches(*args))
        return batches

    monkeypatch.setattr(train, "epoch_batches", recording)
    run_fit(cfg, x, y, subset.minority_classes, get_method(method), cfg.seed)
    suite = torch.cat(visited)

    positions = get_method(method).resample(y, torch.Generator().manual_seed(cfg.seed))
    loader = bench.reference_loader(bench.reference_dataset(cfg, augment=False), subset.indices[positions], cfg, workers=0)
    reference = torch.cat([batch for batch, _ in loader]) * cfg.dataset.std[0] + cfg.dataset.mean[0]  # back to [0, 1]
    assert len(suite) == len(reference) == len(positions)
    assert image_keys(x[suite]) == image_keys((reference * 255).round().to(torch.uint8))


def recording_aos(steps: list[dict]) -> Method:
    """AOS whose attack also records, per step, the images it picks, what it made of them and the minority count."""

    def perturb(model, x, y, is_minority, cfg, draws):
        x_new, attacked = adversarial_minority(model, x, y, is_minority, cfg, draws)
        steps.append({"clean": x[attacked].cpu(), "attacked": x_new[attacked].cpu(), "minority": int(is_minority[y].sum())})
        return x_new, attacked

    return Method(random_oversample, Perturb(minority_draw, perturb))


def synthetic_aos(seed: int, device: str = "cpu") -> list[dict]:
    """What AOS did in each of 6 steps on the synthetic set (see recording_aos)."""
    cfg = make_config("dataset=synthetic", "method=aos", "train.max_steps=6", "train.batch_size=64", f"train.device={device}")
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
    steps: list[dict] = []
    x, y = data.train_x[subset.indices].to(device), data.train_y[subset.indices].to(device)
    run_fit(cfg, x, y, subset.minority_classes, recording_aos(steps), seed)
    return steps


def test_aos_picks_the_same_images_for_a_seed():
    first, second, other = ([s["clean"] for s in synthetic_aos(seed)] for seed in (0, 0, 1))
    assert len(first) == len(second) == 6 and sum(len(p) for p in first) > 0
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_clip_norm_caps_the_step_and_the_run_counts_clipped_steps():
    # one plain SGD step (no warm-up, no weight decay, momentum ~0): the parameters move by lr x the clipped gradient
    cfg = make_config("dataset=synthetic", "method=base", "train.lr=1", "train.warmup=0", "train.weight_decay=0", "train.momentum=1e-9",
                      "train.max_steps=1", "train.epochs=1")
    x, y = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 4
    moved = {}
    for clip in (None, 0.01):
        cfg.train.clip_norm = clip
        torch.manual_seed(0)
        model = build_model(cfg.model, x.shape[1:], 4, cfg.dataset.mean, cfg.dataset.std)
        before = torch.cat([param.detach().flatten().clone() for param in model.parameters()])
        epochs = []
        fit_config(model, cfg, x, y, [0], 0, on_epoch=lambda epoch, values, epochs=epochs: epochs.append(values))
        moved[clip] = (torch.cat([param.detach().flatten() for param in model.parameters()]) - before).norm().item()
        assert ("clipped_steps" in epochs[0]) == (clip is not None)
    assert moved[None] > 0.05 and moved[0.01] == pytest.approx(0.01, rel=1e-4)
    assert epochs[0]["clipped_steps"] == 1


def test_reweight_trains_at_its_lr_scale_times_the_recipes_lr():
    # re-weighting's documented per-method setting (conf/method/reweight.yaml): exactly a run at lr_scale x train.lr
    # (0.5 here, so that 0.05 x 0.5 is 0.025 in floating point too)
    x, y = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 4
    trained = {}
    for lr, lr_scale in ((0.05, 0.5), (0.025, 1.0), (0.05, 1.0)):
        cfg = make_config("dataset=synthetic", "method=reweight", f"train.lr={lr}", f"method.lr_scale={lr_scale}", "train.max_steps=3", "train.epochs=1")
        torch.manual_seed(0)
        model = build_model(cfg.model, x.shape[1:], 4, cfg.dataset.mean, cfg.dataset.std)
        fit_config(model, cfg, x, y, [1, 2, 3], 0)
        trained[lr, lr_scale] = torch.cat([param.detach().flatten() for param in model.parameters()])
    assert make_config("method=reweight").method.lr_scale == 0.2
    assert torch.equal(trained[0.05, 0.5], trained[0.025, 1.0]) and not torch.equal(trained[0.05, 0.5], trained[0.05, 1.0])


@pytest.mark.gpu
def test_on_the_gpu_aos_attacks_a_fraction_p_of_minority_images_and_stays_in_range():
    steps, p = synthetic_aos(0, "cuda"), make_config("method=aos").method.p
    attacked, minority = sum(len(s["clean"]) for s in steps), sum(s["minority"] for s in steps)
    assert abs(attacked - p * minority) < 5 * (minority * p * (1 - p)) ** 0.5  # binomial(minority images, p)
    perturbed = torch.cat([s["attacked"] for s in steps])
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    assert not torch.equal(perturbed, torch.cat([s["clean"] for s in steps]))


@pytest.mark.slow
@needs("MNIST")
def test_quick_benchmark_prints_its_ratios_as_json():
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", "--device=cpu", f"--data-dir={DATA}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    figures = __import__("json").loads(result.stdout)
    for key in ("suite_over_reference", "suite_over_limit", "aos_over_ros", "attacked_fraction"):
        assert figures[key]["mnist"] is not None, key
    assert 0 < figures["attacked_fraction"]["mnist"] < 1


# Parameter hashes after 30 steps of each kind of method (plain, resampled, attacked, re-weighted), with augmentation
# and the clip, by processor kind: float results differ between kinds (their BLAS and oneDNN kernels add in other
# orders), so each kind has its own. Each is what the code gave before the stacked path (aos_bench.train_stacked) was added;
# the committed tables' runs depend on them.
CPU_PINS = {
    # the tables' host: their runs name the model only (logged before 9dfec30), but an AVX-512 EPYC gives these hashes
    # and, in the methods study, every one of Table 2's 30 MNIST BASE, ROS and AOS F1 values exactly
    "AMD EPYC (AVX512)": {"base": "4b83ea0151b1170f", "ros": "eeb6b2907f3d2db5", "aos": "3e2e7ec53a4bcbb1", "reweight": "0a9b23fe30548b3c"},
    "AMD EPYC (AVX2)": {"base": "1a6ff12a9bd54486", "ros": "097d6f1ad08f41f6", "aos": "7a7f0c5006c65c1d", "reweight": "826b4951640ad811"},
    # the methods study's first host; the same hashes from 5de16f4^ (before the split that prepared the stacked path) and HEAD
    "Intel(R) Xeon(R) Processor (AVX512)": {"base": "b9344579d369fd04", "ros": "cb1370f7f29815d9", "aos": "f7fc8e69ec38733d", "reweight": "6e6bd26d515dddde"},
}


def cpu_digests() -> dict[str, str]:
    """Per method of CPU_PINS, the first 16 hex digits of the parameters' sha256 after 30 steps on 1 thread."""
    torch.set_num_threads(1)
    digests = {}
    for name in ("base", "ros", "aos", "reweight"):
        cfg = make_config(
            "dataset=synthetic", f"method={name}", "train.max_steps=30", "train.batch_size=64", "train.device=cpu",
            "dataset.augment.flip=true", "dataset.augment.crop_pad=2", "train.clip_norm=1",
        )
        data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
        subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
        x, y = data.train_x[subset.indices], data.train_y[subset.indices]
        torch.manual_seed(3)
        model = build_model(cfg.model, x.shape[1:], len(data.classes), cfg.dataset.mean, cfg.dataset.std)
        model = model.to(memory_format=torch.channels_last)
        fit_config(model, cfg, x, y, subset.minority_classes, 3)
        digests[name] = hashlib.sha256(b"".join(p.detach().contiguous().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
    return digests


def test_cpu_training_repeats_bit_for_bit_and_is_unchanged_on_a_pinned_processor():
    """On any processor the same job gives the same parameters twice; on a kind in CPU_PINS, those of its pin."""
    digests = cpu_digests()
    assert cpu_digests() == digests
    kind = cpu_kind()  # as the runs' env.device names it
    pins = CPU_PINS.get(kind)
    if pins is None:
        pytest.skip(f"no pin for this processor ({kind}): repeatability checked, unchanged-ness not; pin {digests} to add it")
    assert digests == pins, f"the CPU path's numerics changed on {kind}: committed tables' runs no longer reproduce"


class Stop(Exception):
    """A stop after an epoch's values are logged (as Ctrl-C or SIGTERM would stop the job)."""


# A schedule of 3 epochs with every kind of state a resume must restore: momentum, the warm-up's and decay's position,
# the run's generator (AOS draws, flips, shifts), a redraw's positions, dropout's draws from the global generator.
RESUMED = ("dataset=synthetic", "method=aos", "method.redraw=true", "model=allcnn", "model.widths=[4,8]", "train.epochs=3",
           "train.epoch_size=method", "train.batch_size=128", "train.device=cpu", "dataset.augment.flip=true",
           "dataset.augment.crop_pad=2", "train.clip_norm=1")


def stop_at(stopped: int):
    """An on_epoch that stops the run when epoch `stopped` (counted from 0) has been logged."""

    def on_epoch(epoch: int, values: dict) -> None:
        if epoch == stopped:
            raise Stop

    return on_epoch


def allcnn_fit(cfg, init_seed: int, **options) -> tuple[torch.nn.Module, train.RunStats]:
    """fit() RESUMED's job (seed 0) on a model initialised from init_seed; the model and its statistics."""
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
    torch.manual_seed(init_seed)
    model = build_model(cfg.model, data.train_x.shape[1:], len(data.classes), cfg.dataset.mean, cfg.dataset.std)
    model = model.to(memory_format=torch.channels_last)
    return model, fit_config(model, cfg, data.train_x[subset.indices], data.train_y[subset.indices], subset.minority_classes, 0, **options)


def test_a_run_stopped_after_an_epoch_resumes_from_its_checkpoint_to_the_same_parameters(tmp_path):
    torch.set_num_threads(1)
    cfg, checkpoint = make_config(*RESUMED), tmp_path / "job.pt"
    twin, twin_stats = allcnn_fit(cfg, 0, checkpoint=tmp_path / "twin.pt")  # saving changes nothing: a run that never stops
    plain, plain_stats = allcnn_fit(cfg, 0)
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), plain.parameters(), strict=True))
    assert torch.equal(twin_stats.losses, plain_stats.losses) and twin_stats.epochs == plain_stats.epochs
    assert not (tmp_path / "twin.pt").exists() and len(twin_stats.epochs) == 3
    with pytest.raises(Stop):
        allcnn_fit(cfg, 0, checkpoint=checkpoint, on_epoch=stop_at(1))
    assert [path.name for path in tmp_path.iterdir()] == ["job.pt"]  # the first epoch's state, no temporary file
    logged = []
    resumed, stats = allcnn_fit(cfg, 1, checkpoint=checkpoint, on_epoch=lambda epoch, values: logged.append(epoch))  # any initial model
    assert logged == [1, 2] and stats.resumed_epochs == 1 and not checkpoint.exists()
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), twin.parameters(), strict=True))
    assert torch.equal(stats.losses, twin_stats.losses) and stats.epochs == twin_stats.epochs
    assert stats.train_steps == twin_stats.train_steps and stats.class_counts == twin_stats.class_counts
    assert all(torch.equal(a, b) for a, b in zip(stats.examples, twin_stats.examples, strict=True))


def test_a_checkpoint_of_another_schedule_is_refused_in_one_line(tmp_path):
    cfg = make_config(*RESUMED, "train.epochs=2")
    with pytest.raises(Stop):
        allcnn_fit(cfg, 0, checkpoint=tmp_path / "job.pt", on_epoch=stop_at(1))
    with pytest.raises(UsageError, match=r"job.pt: a checkpoint of a run of \d+ steps, not \d+; delete it to train from the start$"):
        allcnn_fit(make_config(*RESUMED, "train.epochs=2", "train.max_steps=5"), 0, checkpoint=tmp_path / "job.pt")


def cao_lr(epoch: int) -> float:
    """Cao et al.'s adjust_learning_rate (cifar_train.py) for epoch `epoch` counted from 0, as a factor of lr 0.1."""
    epoch = epoch + 1
    if epoch <= 5:
        return epoch / 5
    if epoch > 180:
        return 0.0001
    if epoch > 160:
        return 0.01
    return 1.0


def test_recipe_lt_trains_by_cao_et_als_schedule_and_plain_momentum():
    recipe = train.recipe_of(make_config("experiment=cifar10_lt"))
    assert (recipe.schedule, recipe.nesterov, recipe.weight_decay, recipe.epoch_size, recipe.pad) == ("step", False, 2e-4, "dataset", "zeros")
    optimizer = train.make_optimizer([torch.zeros(1, requires_grad=True)], recipe)
    assert optimizer.param_groups[0]["nesterov"] is False and optimizer.param_groups[0]["momentum"] == 0.9
    steps_per_epoch, total = train.planned_steps(12_406, recipe)
    assert (steps_per_epoch, total) == (97, 19_400)  # one pass over CIFAR-10-LT's 12,406 images an epoch, 200 epochs
    scheduler = train.make_scheduler(optimizer, recipe, total, steps_per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == [pytest.approx(0.1 * cao_lr(t // 97), rel=1e-12) for t in range(total)]  # every step of every epoch
    other = train.recipe_of(make_config("recipe=paper"))  # the other recipes: unchanged
    assert (other.schedule, other.nesterov, other.pad) == ("linear", True, "reflect")


@pytest.mark.parametrize("method", ["base", "ros", "aos"])
def test_epoch_size_dataset_gives_every_method_a_pass_over_the_imbalanced_sets_size(method):
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 40, 30, 20, 10, 8, 6, 4, 2, 1]))
    ts = train.training_set(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, get_method(method), {"p": 0.5, "eps": 0.1}, [9], 0, "dataset")
    assert ts.n_images == len(labels) == 171  # ROS's set is 500 images; an epoch draws 171 of them


@pytest.mark.parametrize("pad", ["reflect", "zeros"])
def test_flip_shift_is_torchvisions_pad_crop_and_flip_on_the_same_draws(pad):
    from torchvision.transforms.v2 import functional as TF

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=gen)
    mirror, shift = train.augment_draws(len(x), True, 3, gen)
    ours = train.flip_shift(x, mirror, shift, 3, pad)
    for i in range(len(x)):
        dy, dx = int(shift[0, i]), int(shift[1, i])
        padded = TF.pad(x[i], [3], padding_mode="reflect" if pad == "reflect" else "constant")
        # a mirrored image: the crop of the mirrored padded image at dx, that is the mirror of the crop at 2 * 3 - dx
        expected = TF.horizontal_flip(TF.crop(padded, dy, 6 - dx, 8, 8)) if mirror[i] else TF.crop(padded, dy, dx, 8, 8)
        assert torch.equal(ours[i], expected), i
