"""The statistics of a table: the paired sign-flip test, and the noise floor of a sweep run under several thread counts."""

import math

import numpy as np
import pandas as pd
from scipy import stats

from aos_bench.report.runs import FLOAT_ORDER, ROW

EXACT_UP_TO = 16  # seeds: the sign-flip test enumerates all 2^n sign patterns up to here, else draws 2^16 of them
DIFFERENCES = (2, 5, 10)  # F1 points: differences whose required number of seeds the noise report gives


def sign_flip_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of the paired sign-flip permutation test that the mean difference is zero."""
    if len(diffs) < 2:
        return np.nan
    resamples = np.inf if len(diffs) <= EXACT_UP_TO else 2**EXACT_UP_TO
    return float(stats.permutation_test((diffs,), np.mean, permutation_type="samples", n_resamples=resamples, rng=0).pvalue)


def paired(by_seed: pd.DataFrame, method: str, reference: str) -> tuple[float, float, int]:
    """`method` − `reference` over the seeds both ran (`by_seed`: a line per seed, a column per method): the mean
    difference, its sign-flip p-value and the number of pairs."""
    both = by_seed.reindex(columns=[method, reference]).dropna()
    diffs = (both[method] - both[reference]).to_numpy()
    return (diffs.mean() if len(diffs) else np.nan), sign_flip_p(diffs), len(diffs)


def seeds_needed(sd: float, difference: float) -> int:
    """Seeds for a paired test to find `difference` with paired-difference sd `sd` (5% two-sided, 80% power), at least 6.

    6 is the sign-flip test's floor: with n seeds no p-value is below 2 / 2^n, which first drops under 0.05 at n = 6.
    """
    return max(6, math.ceil(((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / difference) ** 2))


def noise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per row and method, for sweeps that ran each seed under several float orders (thread counts, stacked or alone):
    within- and between-seed spread, and, where some runs were stacked, the gap between stacked and separate runs.

    within = root mean square over seeds of the std across float orders (same seed and subset, another float order);
    between = std over seeds at one float order, averaged over the float orders;
    stacked_gap = root mean square over seeds of (stacked F1 - separate F1), each the mean of that seed's runs.
    """
    if not runs.duplicated([*ROW, "method", "seed"]).any():  # no seed ran under a second float order
        return pd.DataFrame()
    lines = []
    for key, cell in runs.groupby([*ROW, "method"], sort=False):
        within = np.sqrt(cell.groupby("seed")["f1"].var().mean())
        between = cell.groupby(FLOAT_ORDER)["f1"].std().mean()
        line = {**dict(zip([*ROW, "method"], key, strict=True)), "within": within, "between": between, "seeds": cell["seed"].nunique()}
        if cell["stacked"].nunique() > 1:
            by_kind = cell.groupby(["seed", cell["stacked"] > 1])["f1"].mean().unstack()
            line["stacked_gap"] = np.sqrt(((by_kind[True] - by_kind[False]) ** 2).mean())
        lines.append(line)
    return pd.DataFrame(lines)


def noise_of_differences(runs: pd.DataFrame, other: str = "ros") -> pd.DataFrame:
    """Per row: the std over seeds of AOS minus `other`, at one float order (averaged over them), and the seeds needed."""
    lines = []
    for key, cell in runs.groupby(ROW, sort=False):
        by_seed = cell.pivot_table(index=[*FLOAT_ORDER, "seed"], columns="method", values="f1")
        if not {"aos", other} <= set(by_seed.columns):
            continue
        sd = (by_seed["aos"] - by_seed[other]).groupby(level=FLOAT_ORDER).std().mean()
        lines.append({**dict(zip(ROW, key, strict=True)), "sd": sd, **{f"seeds_{d}": seeds_needed(sd, d) for d in DIFFERENCES}})
    return pd.DataFrame(lines)
