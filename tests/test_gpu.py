"""The CUDA path, run by `pytest -m gpu` (scripts/gpu_check.sh): bf16 steps, FGSM, subsets, predictions, a whole job."""

import mlflow
import pytest
import torch
from conftest import DATA, fit_config, make_config, needs

from aos_bench import job, train
from aos_bench.data import ImageData, load_data
from aos_bench.imbalance import Subset, make_subset
from aos_bench.methods import METHODS, fgsm, frozen, get_method
from aos_bench.models import build_model

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
DATASETS = ["synthetic", pytest.param("mnist", marks=needs("MNIST"))]  # MNIST adds its augmentation (reflect-padded crops)


def prepared(*overrides: str) -> tuple:
    """The real config with overrides, its data and its imbalanced subset."""
    cfg = make_config(f"data_dir={DATA}", *overrides)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    return cfg, data, make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)


def new_model(cfg, data: ImageData, device: torch.device) -> torch.nn.Module:
    """The job's model, seeded, on `device` in channels_last, as job.run builds it."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.train_x.shape[1:], len(data.classes), cfg.dataset.mean, cfg.dataset.std)
    return model.to(device, memory_format=torch.channels_last)


def fit_on_cuda(cfg, data: ImageData, subset: Subset, model: torch.nn.Module) -> train.RunStats:
    """fit() `model` on the subset, held on the GPU."""
    x, y = data.train_x[subset.indices].to(CUDA), data.train_y[subset.indices].to(CUDA)
    return fit_config(model, cfg, x, y, subset.minority_classes, cfg.seed)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_bf16_training_step_of_each_method(dataset, method):
    attack_all = ["method.p=1"] if method == "aos" else []  # every minority image of the batch is attacked
    cfg, data, subset = prepared(f"dataset={dataset}", f"method={method}", *attack_all, "train.max_steps=1", "train.batch_size=64")
    model = new_model(cfg, data, CUDA)
    before = [param.detach().clone() for param in model.parameters()]
    dtypes = []
    model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    stats = fit_on_cuda(cfg, data, subset, model)
    assert stats.train_steps == 1
    assert dtypes and set(dtypes) == {torch.bfloat16}  # precision=auto: bf16 autocast on CUDA, the attack's forward too
    assert all(torch.isfinite(param).all() for param in model.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)) > len(before) // 2
    assert (stats.examples is not None) == (method == "aos")
    if method == "aos":
        assert len(dtypes) == 2  # the attack's forward and the step's


def test_fgsm_on_cuda_leaves_parameter_gradients_and_batchnorm_buffers_as_they_were():
    cfg, data, _ = prepared("dataset=synthetic")
    model = new_model(cfg, data, CUDA).train()
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    x, y = train.to_input(data.train_x[:64].to(CUDA)), data.train_y[:64].to(CUDA)
    with train.autocast(CUDA):
        attacked = fgsm(frozen(model), x, y, 0.1)
    assert not torch.equal(attacked, x) and attacked.min() >= 0 and attacked.max() <= 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), f"{name} changed"
    assert all((param.grad == 7.0).all() for param in model.parameters())


@needs("MNIST")
@pytest.mark.parametrize("imbalance", ["step", "linear"])
def test_a_data_seed_picks_the_same_subset_on_cuda_as_on_the_cpu(imbalance):
    cfg, data, cpu = prepared(f"imbalance={imbalance}", "data_seed=3")
    cuda = make_subset(data.train_y.to(CUDA), data.classes, cfg.imbalance, cfg.data_seed)
    assert torch.equal(cuda.indices.cpu(), cpu.indices)
    assert (cuda.sizes, cuda.minority_classes) == (cpu.sizes, cpu.minority_classes)


@needs("MNIST")
def test_cuda_predictions_agree_with_cpu_predictions_for_the_same_weights():
    cfg, data, subset = prepared("imbalance=none", "method=base", "train.max_steps=300")
    model = new_model(cfg, data, CUDA)
    fit_on_cuda(cfg, data, subset, model)
    on_cuda = train.predict(model, data.test_x.to(CUDA), cfg.train.eval_batch_size).cpu()  # bf16 autocast
    on_cpu = train.predict(model.cpu(), data.test_x, cfg.train.eval_batch_size)  # fp32
    assert (on_cpu == data.test_y).float().mean() > 0.9, "the model should have learnt MNIST in 300 steps"
    assert (on_cuda == on_cpu).float().mean() >= 0.99


def test_a_tiny_job_on_cuda_ends_finished_with_its_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    metrics = job.run(make_config("dataset=synthetic", "train=smoke", "train.device=cuda", "method=aos", f"tracking.uri={uri}"))
    assert 0 <= metrics["test_f1_macro"] <= 100
    mlflow.set_tracking_uri(uri)
    table = mlflow.search_runs(experiment_names=["aos_bench"])
    assert table["status"].tolist() == ["FINISHED"]
    run = table.iloc[0]
    assert run["params.train.device"] == "cuda" and run["metrics.train_steps"] == 6 and run["metrics.adv_images"] > 0
    names = {artifact.path for artifact in mlflow.MlflowClient().list_artifacts(run.run_id)}
    assert {"config.yaml", "class_counts.json", "per_class.csv", "confusion_matrix.png", "adversarial_examples.png"} <= names


@pytest.mark.parametrize("dataset", DATASETS)
def test_a_stack_on_cuda_trains_each_model_as_its_separate_fit(dataset):
    """fit_stack on the GPU in fp32 (cuDNN may use TF32: a looser tolerance than the CPU's) against fit()."""
    from aos_bench.train_stacked import fit_stack

    jobs = [("base", 0), ("ros", 1), ("aos", 2), ("focal", 3)]
    shared = (f"dataset={dataset}", "train.max_steps=8", "train.batch_size=64", "train.precision=fp32")
    alone, models, sets = [], [], []
    for name, seed in jobs:
        attack_all = ["method.p=1"] if name == "aos" else []
        cfg, data, subset = prepared(*shared, f"method={name}", f"seed={seed}", *attack_all)
        alone.append(fit_on_cuda(cfg, data, subset, new_model(cfg, data, CUDA)))
        x, y = data.train_x[subset.indices].to(CUDA), data.train_y[subset.indices].to(CUDA)
        models.append(new_model(cfg, data, CUDA))
        sets.append(train.training_set(x, y, get_method(name), cfg.method, subset.minority_classes, seed, cfg.train.epoch_size))
    together = fit_stack(models, sets, train.recipe_of(cfg))
    for (name, _), one, joint in zip(jobs, alone, together, strict=True):
        assert joint.train_steps == one.train_steps == 8 and joint.class_counts == one.class_counts
        assert ((joint.losses[:4] - one.losses[:4]).abs() / one.losses[:4].abs()).max() < 1e-2, name
        assert (joint.examples is not None) == (name == "aos")
