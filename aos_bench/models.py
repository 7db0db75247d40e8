"""The networks. Every model takes [0, 1] pixels and normalises them itself, so FGSM works in pixel units."""

from collections.abc import Mapping, Sequence

import torch
import torchvision
from torch import nn

from aos_bench.data import UsageError


class Normalize(nn.Module):
    """(x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def convnet(channels: int, n_classes: int, widths: Sequence[int], convs_per_stage: int) -> nn.Sequential:
    """VGG-style stages of (conv3x3-BN-ReLU) x convs_per_stage + 2x2 max-pool, then global average pool and a linear head."""
    layers: list[nn.Module] = []
    for width in widths:
        for _ in range(convs_per_stage):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, n_classes))


def resnet18(channels: int, n_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for small images."""
    net = torchvision.models.resnet18(num_classes=n_classes)
    net.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build_model(cfg: Mapping, channels: int, n_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """The network named by `model.arch`, behind its input normalisation."""
    if cfg["arch"] == "convnet":
        net = convnet(channels, n_classes, cfg["widths"], cfg["convs_per_stage"])
    elif cfg["arch"] == "resnet18":
        net = resnet18(channels, n_classes)
    else:
        raise UsageError(f"model.arch={cfg['arch']!r} is not one of: convnet, resnet18")
    return nn.Sequential(Normalize(mean, std), net)
