"""Dataset packs for GPU nodes: the images a sweep's jobs draw, lossless, and a one-line refusal of a job they lack."""

import pytest
import torch
from conftest import make_config

from aos_bench.data import load_data
from aos_bench.errors import UsageError
from aos_bench.job import prepare
from aos_bench.pack import pack_for


@pytest.mark.parametrize("channels", [1, 3])
def test_a_pack_holds_the_sweeps_subsets_and_test_split_exactly(tmp_path, channels):
    sweep = ["dataset=synthetic", f"dataset.channels={channels}", "imbalance=exp", "imbalance.rho=20,5", "seed=0,1", f"data_dir={tmp_path}"]
    images, _ = pack_for(tmp_path / "synthetic_pack.npz", sweep)
    full = load_data(make_config(*sweep[:3]).dataset, tmp_path / "elsewhere", None)  # generated, not packed
    for rho in (20, 5):
        cfg = make_config(*sweep[:3], f"imbalance.rho={rho}", f"data_dir={tmp_path}")
        packed, subset = prepare(cfg)
        assert packed.present is not None and packed.present[subset.indices].all()
        assert torch.equal(packed.train_x[subset.indices], full.train_x[subset.indices])  # lossless
        assert torch.equal(packed.test_x, full.test_x) and torch.equal(packed.test_y, full.test_y)
        assert torch.equal(packed.train_y, full.train_y) and packed.classes == full.classes
    assert images == int(packed.present.sum()) < len(full.train_y)  # rho = 5's subset holds rho = 20's: 1 draw rule


def test_a_job_whose_subset_the_pack_lacks_is_refused_in_one_line(tmp_path):
    pack_for(tmp_path / "synthetic_pack.npz", ["dataset=synthetic", "imbalance=exp", "imbalance.rho=20", f"data_dir={tmp_path}"])
    with pytest.raises(UsageError, match="without .* of this job's .* training images") as error:
        prepare(make_config("dataset=synthetic", "imbalance=exp", "imbalance.rho=2", f"data_dir={tmp_path}"))
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="was made with the dataset settings"):  # other image settings: not this pack
        prepare(make_config("dataset=synthetic", "dataset.image_size=8", "imbalance=exp", "imbalance.rho=20", f"data_dir={tmp_path}"))


def test_a_bad_value_is_refused_in_one_line_before_any_image_is_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # imbalance trusts the value: checks.validate refuses it at the pack's door
        pack_for(tmp_path / "synthetic_pack.npz", ["dataset=synthetic", "imbalance=exp", "imbalance.rho=0.5", f"data_dir={tmp_path}"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("aos_bench: imbalance.rho=0.5: a number >= 1")
    assert not (tmp_path / "synthetic_pack.npz").exists()
