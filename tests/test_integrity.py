"""Every run records which images it trained on (subset_sha256); the report refuses to compare runs that differ."""

import pandas as pd
import pytest
import torch
from conftest import make_config

from aos_bench.data import load_data
from aos_bench.imbalance import make_subset
from aos_bench.job import subset_sha256
from aos_bench.report.runs import UNRECORDED, one_table


def subset_hash(*overrides: str) -> str:
    """subset_sha256 of the imbalanced synthetic training set drawn with these overrides."""
    cfg = make_config("dataset=synthetic", *overrides)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.cache_dir)
    return subset_sha256(make_subset(data.train_y, data.classes, cfg.imbalance, cfg.data_seed).indices)


def test_the_hash_follows_the_data_seed_and_the_imbalance_not_the_method():
    first = subset_hash("method=base")
    assert subset_hash("method=aos", "seed=3") == first
    assert subset_hash("data_seed=1") != first and subset_hash("imbalance.mu=0.5") != first
    assert subset_sha256(torch.tensor([3, 1, 2], dtype=torch.int32)) == subset_sha256(torch.tensor([3, 1, 2]))


def runs(subsets: list[str]) -> pd.DataFrame:
    """The report's run table for one row and seed, one method per entry of `subsets`."""
    methods = ["base", "ros", "aos"][: len(subsets)]
    return pd.DataFrame({"dataset": "mnist", "mu": 0.3, "rho": 500.0, "method": methods, "seed": 0, "threads": "2", "stacked": 1,
                         "recipe": "paper", "subset": subsets})


def test_the_report_refuses_a_row_whose_methods_trained_on_different_subsets():
    assert len(one_table(runs(["a", "a", UNRECORDED]), "s")) == 3  # runs from before the tag still count
    with pytest.raises(ValueError, match=r"trained on different images \(subset_sha256 differs\)"):
        one_table(runs(["a", "a", "b"]), "s")
