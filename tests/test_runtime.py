"""Reproducibility: every run records what it ran on, and the same job with the same threads gives the same numbers."""

import mlflow
import pytest
import torch
from conftest import make_config

from aos_bench import job
from aos_bench.checks import validate
from aos_bench.errors import UsageError
from aos_bench.tracking import config_hash

ENV_KEYS = {"torch", "torchvision", "cuda", "device", "cpu_count", "threads", "precision", "deterministic"}


@pytest.fixture
def restore_threads():
    """Give the test process back its torch thread count and deterministic mode."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def run_twice(tmp_path, *overrides: str) -> list[mlflow.entities.Run]:
    """The same job run twice into one store; its two MLflow runs."""
    cfg = make_config("dataset=synthetic", "method=aos", "train.max_steps=20", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *overrides)
    ids = []
    for _ in range(2):
        job.run(cfg)
        ids.append(mlflow.last_active_run().info.run_id)
    return [mlflow.get_run(run_id) for run_id in ids]


@pytest.mark.parametrize(("threads", "deterministic"), [(1, "false"), (2, "true")])
def test_the_same_job_with_the_same_threads_gives_bit_identical_metrics(tmp_path, restore_threads, threads, deterministic):
    first, second = run_twice(tmp_path, f"train.threads={threads}", f"train.deterministic={deterministic}")
    assert first.data.metrics == second.data.metrics  # exact float equality, every metric
    assert first.data.params["env.threads"] == str(threads)
    assert first.data.params["env.deterministic"] == deterministic


def test_every_run_logs_its_environment_and_recipe(tmp_path, restore_threads):
    run, _ = run_twice(tmp_path, "train=smoke", "train.threads=1")
    env = {key.removeprefix("env."): value for key, value in run.data.params.items() if key.startswith("env.")}
    assert set(env) == ENV_KEYS
    assert env["torch"] == torch.__version__ and env["threads"] == "1" and env["precision"] == "fp32"
    assert env["cuda"] == "none" and env["device"]  # the CPU's model name
    assert run.data.tags["recipe"] == run.data.params["recipe.name"] == "paper"


def test_threads_and_determinism_count_in_the_config_hash():
    base = config_hash(make_config("dataset=synthetic"))
    assert config_hash(make_config("dataset=synthetic", "train.threads=1")) != base
    assert config_hash(make_config("dataset=synthetic", "train.deterministic=true")) != base


@pytest.mark.parametrize(("override", "message"), [("train.threads=0", "train.threads=0"), ("train.deterministic=maybe", "train.deterministic=maybe: one of: true, false")])
def test_bad_threads_or_determinism_are_rejected(override, message):
    with pytest.raises(UsageError, match=message):
        validate(make_config("dataset=synthetic", override))
