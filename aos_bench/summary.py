"""What data a job resolved, before it trains: classes, images per class, minority classes and their rule, the test
split's source. Printed as a few lines and logged to the run (params and class_counts.json)."""

from collections.abc import Sequence

import torch

from aos_bench.data import ImageData
from aos_bench.imbalance import Subset

WIDTH = 100  # characters per line of the printed class table; wider tables wrap into blocks of columns


def data_record(name: str, data: ImageData, subset: Subset) -> dict:
    """The resolved data as JSON-ready values: train images per class after the imbalance (`imbalanced`), test images
    per class, the minority classes (labels) and their rule, the test split's source and the files left out."""
    return {
        "dataset": name,
        "classes": list(data.classes),
        "minority_classes": list(subset.minority_classes),
        "minority_rule": subset.minority_rule,
        "imbalanced": list(subset.sizes),
        "test": torch.bincount(data.test_y, minlength=len(data.classes)).tolist(),
        "test_source": data.test_source,
        "left_out": dict(data.left_out) | ({"unreadable images (dataset.skip_bad)": len(data.skipped)} if data.skipped else {}),
    }


def data_params(record: dict) -> dict[str, str]:
    """The record's words as run params, so that the MLflow UI shows them as columns."""
    return {"data.test_source": record["test_source"], "data.minority_rule": record["minority_rule"]}


def data_lines(record: dict) -> list[str]:
    """The record as a few lines: a header, a class table (minority classes starred) and the minority rule."""
    classes = [f"{c}*" if i in record["minority_classes"] else str(c) for i, c in enumerate(record["classes"])]
    header = f"data: {record['dataset']}, {len(classes)} classes; test split: {record['test_source']}"
    rows = {"class": classes, "train": record["imbalanced"], "test": record["test"]}
    minority = ", ".join(str(record["classes"][c]) for c in record["minority_classes"]) or "none"
    lines = [header, *class_table(rows), f"  minority (*): {minority}; rule: {record['minority_rule']}"]
    if record["left_out"]:
        lines.append("  left out: " + ", ".join(f"{n} {what}" for what, n in record["left_out"].items()))
    return lines


def class_table(rows: dict[str, Sequence]) -> list[str]:
    """Rows of equal length as right-aligned columns, two spaces indented, wrapped into blocks of at most WIDTH characters."""
    label = max(len(name) for name in rows)
    cells = {name: [str(v) for v in values] for name, values in rows.items()}
    widths = [max(len(column[i]) for column in cells.values()) for i in range(len(next(iter(cells.values()))))]
    blocks, start = [], 0
    while start < len(widths):
        end, used = start, 2 + label
        while end < len(widths) and (end == start or used + 2 + widths[end] <= WIDTH):
            used += 2 + widths[end]
            end += 1
        blocks += [
            f"  {name:<{label}}" + "".join(f"  {value:>{widths[i]}}" for i, value in enumerate(cells[name][start:end], start))
            for name in rows
        ]
        start = end
    return blocks
