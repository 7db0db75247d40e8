"""The networks. Every model takes [0, 1] pixels and normalises them itself, so FGSM works in pixel units."""

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from aos_bench.errors import UsageError


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


def lenet(
    channels: int, n_classes: int, size: tuple[int, int], widths: Sequence[int], hidden: Sequence[int], pad_input: int, conv_relu: bool
) -> nn.Sequential:
    """LeNet family: (conv5x5 [-ReLU] - 2x2 max-pool) per width, then fully connected ReLU layers of `hidden` units and a linear head."""
    layers: list[nn.Module] = []
    h, w = size[0] + 2 * pad_input, size[1] + 2 * pad_input
    for i, width in enumerate(widths):
        conv = nn.Conv2d(channels, width, 5, padding=pad_input if i == 0 else 0)  # only the input image is padded
        layers += [conv, *([nn.ReLU(inplace=True)] if conv_relu else []), nn.MaxPool2d(2)]
        channels, h, w = width, (h - 4) // 2, (w - 4) // 2
    if h < 1 or w < 1:
        raise UsageError(f"model.widths={list(widths)}: {len(widths)} conv-pool stages shrink a {size[0]}x{size[1]} image to nothing")
    features = channels * h * w
    layers.append(nn.Flatten())
    for units in hidden:
        layers += [nn.Linear(features, units), nn.ReLU(inplace=True)]
        features = units
    return nn.Sequential(*layers, nn.Linear(features, n_classes))


def allcnn(channels: int, n_classes: int, widths: Sequence[int], dropout: Sequence[float]) -> nn.Sequential:
    """All-CNN-C (Springenberg et al. 2015): 3x3 convs, stride-2 convs instead of pooling, 1x1 class maps, global average."""
    small, large = widths
    drop_in, drop_mid = dropout

    def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.ReLU(inplace=True)]

    return nn.Sequential(
        nn.Dropout(drop_in),
        *conv(channels, small, 3), *conv(small, small, 3), *conv(small, small, 3, stride=2), nn.Dropout(drop_mid),
        *conv(small, large, 3), *conv(large, large, 3), *conv(large, large, 3, stride=2), nn.Dropout(drop_mid),
        *conv(large, large, 3, padding=0), *conv(large, large, 1, padding=0), nn.Conv2d(large, n_classes, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def resnet18(channels: int, n_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for small images."""
    net = torchvision.models.resnet18(num_classes=n_classes)
    net.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


class CifarBlock(nn.Module):
    """He et al.'s CIFAR residual block: two conv3x3-BN, a ReLU between and after; a parameter-free shortcut (option A:
    every other pixel, the new channels zero-padded) where the block halves the size and doubles the width."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, (c_out - c_in) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CosineHead(nn.Module):
    """Cosine similarity between the features and each class's weight column, in [-1, 1]: the normed linear layer
    that Cao et al.'s LDAM-DRW code puts on its ResNet-32 (their logit scale s then multiplies it)."""

    def __init__(self, features: int, n_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(features, n_classes).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


def cifar_resnet(channels: int, n_classes: int, depth: int, widths: Sequence[int], cosine_head: bool) -> nn.Sequential:
    """He et al.'s CIFAR ResNet of `depth` = 6n + 2 layers: a conv3x3 stem, three stages of n blocks at `widths`
    (the second and third halving the size), global average pooling and a linear (or cosine) head; conv and linear
    weights Kaiming-normal, as in Cao et al.'s code. depth 32: 0.46 M parameters (6n + 2: registry.MODELS)."""
    blocks, c = (depth - 2) // 6, widths[0]
    layers: list[nn.Module] = [nn.Conv2d(channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            layers.append(CifarBlock(c, width, 2 if stage and not block else 1))
            c = width
    head = CosineHead(c, n_classes) if cosine_head else nn.Linear(c, n_classes)
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
    return net


# model.arch -> its network, given the model config, the image's channels, the classes and the image's (height, width);
# registry.MODELS holds each one's parameters and display name
BUILDERS: dict[str, Callable[[Mapping, int, int, tuple[int, int]], nn.Module]] = {
    "convnet": lambda cfg, channels, n_classes, size: convnet(channels, n_classes, cfg["widths"], cfg["convs_per_stage"]),
    "lenet": lambda cfg, channels, n_classes, size: lenet(
        channels, n_classes, size, cfg["widths"], cfg["hidden"], cfg["pad_input"], cfg["conv_relu"]
    ),
    "allcnn": lambda cfg, channels, n_classes, size: allcnn(channels, n_classes, cfg["widths"], cfg["dropout"]),
    "resnet18": lambda cfg, channels, n_classes, size: resnet18(channels, n_classes),
    "cifar_resnet": lambda cfg, channels, n_classes, size: cifar_resnet(channels, n_classes, cfg["depth"], cfg["widths"], cfg["cosine_head"]),
}


def build_model(cfg: Mapping, shape: Sequence[int], n_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """The network named by `model.arch` for images of `shape` (channels, height, width), behind its input normalisation."""
    channels, height, width = shape
    return nn.Sequential(Normalize(mean, std), BUILDERS[cfg["arch"]](cfg, channels, n_classes, (height, width)))
