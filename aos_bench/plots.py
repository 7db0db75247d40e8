"""Figures logged with each run: the confusion matrix and AOS's adversarial examples."""

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch


def confusion_figure(matrix: np.ndarray, classes: Sequence[str]) -> plt.Figure:
    """Confusion matrix, rows = true class, columns = predicted class, counts written in the cells."""
    size = 1.5 + 0.5 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(classes, rotation=90)
    ax.set_yticklabels(classes)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > matrix.max() / 2 else "black")
    return fig


def adversarial_figure(clean: torch.Tensor, attacked: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> plt.Figure:
    """Minority originals (top row) above their FGSM versions (bottom row), [0, 1] images."""
    n = len(clean)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3), squeeze=False)
    for col in range(n):
        for row, images in enumerate((clean, attacked)):
            image = images[col].permute(1, 2, 0).numpy()
            axes[row, col].imshow(image.squeeze(2) if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1)
            axes[row, col].axis("off")
        axes[0, col].set_title(classes[int(labels[col])], fontsize=8)
    axes[0, 0].text(-0.3, 0.5, "original", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.3, 0.5, "FGSM", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    return fig


def log_figure(figure: plt.Figure, name: str) -> None:
    """Log `figure` as a PNG artifact of the active MLflow run, then free it."""
    import mlflow

    mlflow.log_figure(figure, name)
    plt.close(figure)
