"""hydra/launcher=stacked trains each job of a stack as its separate job would, up to float order, and keeps jobs jobs."""

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, fit_config, make_config

from aos_bench import train, train_stacked
from aos_bench.checks import stack_problem
from aos_bench.data import load_data
from aos_bench.errors import UsageError
from aos_bench.imbalance import make_subset
from aos_bench.methods import Method, Perturb, adversarial_minority, get_method, keep_all, minority_draw, random_oversample
from aos_bench.models import build_model
from aos_bench.report.stats import noise

COMMON = (
    "dataset=synthetic", "train.max_steps=40", "train.batch_size=64", "train.device=cpu", "train.clip_norm=1",
    "dataset.augment.flip=true", "dataset.augment.crop_pad=2",
)
# Methods, seeds and AOS settings that differ within one stack; mu moves the subset and the minority classes.
JOBS = [
    ("base", 0, ()), ("ros", 1, ()), ("aos", 0, ()), ("focal", 2, ("imbalance.mu=0.6",)),
    ("aos", 3, ("method.eps=0.05", "method.p=0.5", "imbalance.mu=0.6")), ("aos", 4, ("method.targeted=true", "method.steps=2")),
]
STEP_TOLERANCE = 1e-5  # relative, per step over the first 10: measured 2e-7 on this machine (float order only)


def job_inputs(name: str, seed: int, extra: tuple, threads: int = 1) -> tuple:
    """A job's config, model (initialised from its seed), training images, labels and minority classes."""
    torch.set_num_threads(threads)
    cfg = make_config(*COMMON, f"method={name}", f"seed={seed}", *extra)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    subset = make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.train_x.shape[1:], len(data.classes), cfg.dataset.mean, cfg.dataset.std)
    return cfg, model.to(memory_format=torch.channels_last), data.train_x[subset.indices], data.train_y[subset.indices], subset.minority_classes


def stacked(jobs: list[tuple], methods: list[Method]) -> tuple[list[train.RunStats], list]:
    """fit_stack() over `jobs` (job_inputs tuples) with `methods`; each model's statistics, and the models."""
    sets = [train.training_set(x, y, m, cfg.method, minority, cfg.seed, cfg.train.epoch_size) for (cfg, _, x, y, minority), m in zip(jobs, methods, strict=True)]
    models = [job[1] for job in jobs]
    return train_stacked.fit_stack(models, sets, train.recipe_of(jobs[0][0])), models


def test_a_stack_trains_each_model_as_its_separate_job_up_to_float_order():
    separate, inputs = [], []
    for name, seed, extra in JOBS:
        cfg, model, x, y, minority = job_inputs(name, seed, extra)
        separate.append(fit_config(model, cfg, x, y, minority, seed))
        inputs.append(job_inputs(name, seed, extra))
    together, _ = stacked(inputs, [get_method(name) for name, _, _ in JOBS])
    for (name, seed, _), alone, joint in zip(JOBS, separate, together, strict=True):
        assert joint.train_steps == alone.train_steps == 40
        assert joint.class_counts == alone.class_counts  # the same resampled set
        first = alone.losses[:10]
        assert ((joint.losses[:10] - first).abs() / first.abs()).max() < STEP_TOLERANCE, (name, seed)
        assert [e.keys() for e in joint.epochs] == [e.keys() for e in alone.epochs]
        assert [e.keys() for e in joint.epochs] == [{"train_loss", "clipped_steps"} | ({"adv_images"} if name == "aos" else set())] * len(joint.epochs)
        if name == "aos":  # the same attacked images: the same draws picked them, FGSM made the same pixels of them
            assert [e["adv_images"] for e in joint.epochs] == [e["adv_images"] for e in alone.epochs] and joint.epochs[0]["adv_images"] > 0
            assert torch.equal(joint.examples[2], alone.examples[2])
            assert (joint.examples[1] - alone.examples[1]).abs().max() < 1e-6


def test_each_model_of_a_stack_is_clipped_as_clip_grad_norm_clips_it_alone():
    grads = [torch.randn(3, 4, 5), torch.randn(3, 7)]
    grads[0][1] *= 1e-3  # model 1: under the norm, left alone
    params = [g.clone().requires_grad_(True) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    clipped = train_stacked.clip_each(params, 1.0)
    for m in range(3):
        alone = [g[m].clone().requires_grad_(True) for g in grads]
        for p, g in zip(alone, grads, strict=True):
            p.grad = g[m].clone()
        norm = torch.nn.utils.clip_grad_norm_(alone, 1.0)
        assert bool(clipped[m]) == bool(norm > 1.0)
        for p, a in zip(params, alone, strict=True):
            assert torch.allclose(p.grad[m], a.grad, rtol=1e-6)


def test_a_diverged_model_fails_alone_and_the_others_train_on():
    def blows_up(logits, y, counts, cfg, done):
        return torch.nn.functional.cross_entropy(logits, y) * (torch.inf if done > 0.5 else 1)  # from step 22 of 40 (counted from 1)

    jobs = [job_inputs("base", 0, ()), job_inputs("base", 1, ())]
    together, _ = stacked(jobs, [get_method("base"), Method(keep_all, loss=blows_up)])
    assert together[0].error is None and torch.isfinite(together[0].losses).all()
    assert "the training loss is inf at step 22" in together[1].error


def test_a_perturbing_method_without_a_stacked_form_is_refused_before_a_step():
    no_stacked_form = Method(random_oversample, Perturb(minority_draw, adversarial_minority))  # a hook for fit() only
    with pytest.raises(UsageError, match=r"^method.name=aos: hydra/launcher=stacked has no stacked form of its perturb hook; run it"):
        stacked([job_inputs("base", 0, ()), job_inputs("aos", 1, ())], [get_method("base"), no_stacked_form])


def sweep(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m aos_bench -m` on synthetic data, 30 steps, into tmp_path's store; its log (Hydra's and the errors)
    in `stdout`."""
    command = [sys.executable, "-m", "aos_bench", "-m", "dataset=synthetic", "train.max_steps=30", "train.threads=1",
               f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/multirun", *overrides]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, timeout=600)


def runs_of(tmp_path) -> list:
    """The job runs in tmp_path's store (not the sweeps' parent runs)."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.sweep != ''")


def test_stacked_sweep_logs_each_job_as_a_separate_job_would_then_resumes_without_training(tmp_path):
    grid = ("method=base,reweight,aos",)
    no_report = "hydra.callbacks.sweep.report=false"  # seconds saved where the report is not looked at
    separate = sweep(tmp_path / "separate", *grid, no_report)
    assert separate.returncode == 0, separate.stdout[-2000:]
    done = sweep(tmp_path / "stacked", "hydra/launcher=stacked", *grid)
    assert done.returncode == 0, done.stdout[-2000:]
    # reweight's lr_scale (0.2) puts it in a stack of its own
    assert "training a stack of 2: base " in done.stdout and "training a stack of 1: reweight " in done.stdout
    alone = {r.data.tags["config_hash"]: r for r in runs_of(tmp_path / "separate")}
    joint = runs_of(tmp_path / "stacked")
    assert len(joint) == 3 and {r.info.status for r in joint} == {"FINISHED"}
    for run in joint:
        twin = alone[run.data.tags["config_hash"]]  # the same job: same config hash, params and artifacts
        assert run.data.params["env.stacked_models"] == ("1" if run.data.tags["method"] == "reweight" else "2")
        differ = {k for k in run.data.params.keys() | twin.data.params.keys() if run.data.params.get(k) != twin.data.params.get(k)}
        assert differ == {"env.stacked_models", "tracking.uri"}  # the two sweeps' stores differ
        assert run.data.tags["subset_sha256"] == twin.data.tags["subset_sha256"]
        assert set(run.data.metrics) == set(twin.data.metrics)
        assert abs(run.data.metrics["test_f1_macro"] - twin.data.metrics["test_f1_macro"]) < 5  # 30 steps: float order only
    report = pd.read_csv(tmp_path / "stacked" / "multirun" / "sweep_runs.csv")  # the sweep's report names the stacking
    assert sorted(report["stacked"]) == [1, 2, 2]
    again = sweep(tmp_path / "stacked", "hydra/launcher=stacked", *grid, no_report)
    assert again.returncode == 0 and again.stdout.count("skipped: this sweep already has a FINISHED run") == 3
    assert "training a stack" not in again.stdout and len(runs_of(tmp_path / "stacked")) == 3


def test_a_network_with_batchnorm_is_refused_in_one_line_before_any_run(tmp_path):
    done = sweep(tmp_path, "hydra/launcher=stacked", "method=base,ros", "model=convnet_tiny")
    assert done.returncode == 2
    assert done.stdout.strip().splitlines()[-1].startswith("aos_bench: model.arch=convnet: hydra/launcher=stacked trains")
    assert not (tmp_path / "mlflow.db").exists() or runs_of(tmp_path) == []


def test_a_checkpoint_folder_is_refused_for_the_stacked_launcher_in_one_line():
    assert stack_problem(make_config("dataset=synthetic")) is None
    assert stack_problem(make_config("dataset=synthetic", "tracking.checkpoint_dir=ckpt")) == (
        "tracking.checkpoint_dir=ckpt: hydra/launcher=stacked saves no checkpoint (a stopped stack trains again); allowed with it: null"
    )


def test_the_noise_floor_sets_stacked_runs_against_separate_ones():
    # ROS, seeds 0-2: alone under 1 and 2 threads (F1 f and f + 1), and stacked (f + 0.5 + gap_s)
    gaps = [0.2, -0.4, 0.6]
    lines = []
    for seed, f1 in enumerate([80.0, 82.0, 84.0]):
        lines += [{"threads": "1", "stacked": 1, "f1": f1}, {"threads": "2", "stacked": 1, "f1": f1 + 1}]
        lines.append({"threads": "1", "stacked": 8, "f1": f1 + 0.5 + gaps[seed]})
        for line in lines[-3:]:
            line.update({"dataset": "mnist", "mu": 0.9, "rho": 500.0, "method": "ros", "seed": seed})
    spread = noise(pd.DataFrame(lines)).iloc[0]
    assert spread["stacked_gap"] == pytest.approx(np.sqrt(np.mean(np.square(gaps))))  # stacked - mean of the separate runs
    assert spread["seeds"] == 3
    assert noise(pd.DataFrame([line for line in lines if line["threads"] == "1" and line["stacked"] == 1])).empty  # one float order
    alone = pd.DataFrame([line for line in lines if line["stacked"] == 1])
    assert "stacked_gap" not in noise(alone)  # no stacked run: the floor of thread counts only, as before


def test_twins_pairs_each_run_with_the_run_of_the_same_job_in_the_other_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("aos_bench")
    parents = {kind: client.create_run(experiment).info.run_id for kind in ("stacked", "alone")}
    for kind, preset, shift in (("stacked", "noise", 0.3), ("alone", "table2", 0.0)):
        for seed in (0, 1):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parents[kind]}, run_name=f"ros seed={seed}")
            params = {"method.name": "ros", "seed": seed, "preset": preset, "env.threads": 1 if kind == "alone" else 2}
            if kind == "stacked":
                params["env.stacked_models"] = 2
            for key, value in params.items():
                client.log_param(run.info.run_id, key, value)
            client.log_metric(run.info.run_id, "test_f1_macro", 80 + seed + shift * (1 if seed else -1))
            client.set_terminated(run.info.run_id)
    command = [sys.executable, str(ROOT / "scripts" / "twins.py"), "--tracking-uri", uri, parents["stacked"], parents["alone"]]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()
    assert out[0] == "ros seed=0: 79.70 (stacked, 2 models) against 80.00, -0.30"
    assert out[-1] == "ros: 2 pairs, RMS of first - second 0.30, RMS of the pair's std 0.21, largest |difference| 0.300000"
