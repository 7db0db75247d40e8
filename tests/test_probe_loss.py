"""scripts/probe_loss.py: one statistics line per window of steps of a loss-based method's run, the run in MLflow."""

import json
import sys

import mlflow
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import probe_loss


def test_probe_records_every_step_and_the_run_it_logged(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["dataset=synthetic", "train=smoke", "method=reweight", "imbalance.rho=10", "train.max_steps=8", f"tracking.uri={uri}"]
    monkeypatch.setattr(sys, "argv", ["probe_loss.py", *args, "--json", str(tmp_path / "steps.json")])
    probe_loss.main()
    steps = json.loads((tmp_path / "steps.json").read_text())["steps"]
    [run] = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("aos_bench").experiment_id])
    assert len(steps) == run.data.metrics["train_steps"] == 8
    assert all(s["minority_images"] <= 32 and 1 <= s["classes_predicted"] <= 10 for s in steps)  # train=smoke: batches of 32
    assert sum(s["minority_images"] for s in steps) > 0  # rho 10: 20 images a minority class, 3 minority classes
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("steps | mean loss") and len(printed) == 1 + 8 + 1
    assert printed[1].startswith(f"1-1 | {steps[0]['loss']:.3f} | ")
    assert printed[-1].endswith(f"test_f1_macro {run.data.metrics['test_f1_macro']:.2f}, test_f1_minority {run.data.metrics['test_f1_minority']:.2f}")


def test_a_method_without_a_loss_of_its_own_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["probe_loss.py", "dataset=synthetic", "method=ros"])
    with pytest.raises(SystemExit) as stop:
        probe_loss.main()
    assert stop.value.code == 2
