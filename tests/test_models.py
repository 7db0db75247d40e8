"""The networks: output shapes for every dataset's channels and image size, under every recipe and model option."""

import pytest
import torch
from conftest import make_config

from aos_bench.models import build_model

DATASETS = ("mnist", "cifar10", "intel", "synthetic")
MODELS = ("lenet5", "caffe_lenet", "allcnn", "convnet_mnist", "convnet_cifar10", "convnet_intel", "convnet_tiny", "resnet18", "resnet32")


def image_shape(cfg) -> tuple[int, int, int]:
    """(channels, height, width) of the dataset's images as the config loads them."""
    channels = cfg.dataset.get("channels", 1 if cfg.dataset.name == "mnist" else 3)
    return channels, cfg.dataset.image_size, cfg.dataset.image_size


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_gives_one_logit_per_class_for_every_dataset(dataset, model):
    cfg = make_config(f"dataset={dataset}", f"model={model}")
    shape = image_shape(cfg)
    n_classes = 6 if dataset == "intel" else 10
    net = build_model(cfg.model, shape, n_classes, cfg.dataset.mean, cfg.dataset.std).eval()
    with torch.no_grad():
        logits = net(torch.rand(2, *shape))
    assert logits.shape == (2, n_classes)


def test_lenet5_is_the_classic_network():
    cfg = make_config("dataset=mnist", "model=lenet5")
    net = build_model(cfg.model, (1, 28, 28), 10, [0.5], [0.25])
    layers = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert [(m.weight.shape[0]) for m in layers] == [6, 16, 120, 84, 10]
    assert layers[2].in_features == 16 * 5 * 5  # 28 px padded by 2 -> 14 -> 5: the original's 400 features
    assert sum(p.numel() for p in net.parameters()) == 61_706


def test_caffe_lenet_matches_caffes_prototxt():
    cfg = make_config("dataset=mnist", "model=caffe_lenet")
    net = build_model(cfg.model, (1, 28, 28), 10, [0.5], [0.25])
    layers = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert [(m.weight.shape[0]) for m in layers] == [20, 50, 500, 10]
    assert layers[2].in_features == 50 * 4 * 4
    assert sum(p.numel() for p in net.parameters()) == 431_080  # Caffe's LeNet on MNIST


def test_allcnn_c_has_its_published_size_on_cifar10():
    cfg = make_config("dataset=cifar10", "model=allcnn")
    net = build_model(cfg.model, (3, 32, 32), 10, cfg.dataset.mean, cfg.dataset.std)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.37e6, rel=0.01)  # Springenberg et al.: 1.4 M


def test_resnet32_is_he_et_als_cifar_network():
    cfg = make_config("dataset=cifar10", "model=resnet32")
    net = build_model(cfg.model, (3, 32, 32), 10, cfg.dataset.mean, cfg.dataset.std)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31 and len([m for m in net.modules() if isinstance(m, torch.nn.Linear)]) == 1  # 32 layers
    assert [c.out_channels for c in convs] == [16] * 11 + [32] * 10 + [64] * 10  # a stem, then 3 stages x 5 blocks x 2 convs
    assert sum(p.numel() for p in net.parameters()) == 464_154  # Cao et al.'s and Idelbayev's ResNet-32: 0.46 M
    features = net[1][:-1](torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 64)  # 32 -> 16 -> 8 px, then the global average


def test_resnet32_cosine_head_gives_cosines():
    cfg = make_config("dataset=cifar10", "model=resnet32", "model.cosine_head=true")
    net = build_model(cfg.model, (3, 32, 32), 10, cfg.dataset.mean, cfg.dataset.std).eval()
    with torch.no_grad():
        logits = net(torch.rand(8, 3, 32, 32))
    assert logits.abs().max() <= 1 + 1e-6 and logits.abs().max() > 0.01
    assert sum(p.numel() for p in net.parameters()) == 464_154 - 10  # the cosine head has no bias
