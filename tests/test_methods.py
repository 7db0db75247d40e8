"""BASE, ROS and AOS: what each does to the training set and to a batch."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from aos_bench.data import UsageError
from aos_bench.methods import fgsm, get_method, keep_all, random_oversample, validate_method
from aos_bench.models import build_model

EPS = 0.1


def imbalanced_labels() -> torch.Tensor:
    """Class sizes 50, 7, 20, 1: classes 1, 2, 3 are minority."""
    return torch.cat([torch.full((n,), c) for c, n in enumerate([50, 7, 20, 1])])


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model({"arch": "convnet", "widths": [8, 16], "convs_per_stage": 1}, (1, 12, 12), 4, [0.5], [0.25])


def test_base_keeps_every_image_once():
    labels = imbalanced_labels()
    assert torch.equal(keep_all(labels, torch.Generator()), torch.arange(len(labels)))


def test_ros_equalises_classes_and_keeps_every_original():
    labels = imbalanced_labels()
    positions = random_oversample(labels, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[positions]).tolist() == [50, 50, 50, 50]
    assert set(positions.tolist()) == set(range(len(labels)))  # every original image at least once
    for c in range(4):  # copies only of the class's own images
        assert (labels[positions[labels[positions] == c]] == c).all()


def test_ros_copies_are_uniform_over_a_class():
    labels = torch.cat([torch.zeros(10000, dtype=torch.long), torch.ones(4, dtype=torch.long)])
    positions = random_oversample(labels, torch.Generator().manual_seed(1))
    copies = torch.bincount(positions[labels[positions] == 1] - 10000)
    assert copies.sum() == 10000 and (copies - 2500).abs().max() < 5 * 2500**0.5  # multinomial, 4 equal cells


def attack_batch(n: int = 4000, p: float = 0.3, seed: int = 0):
    """A batch of random images and labels, half minority, attacked by AOS with probability p."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 12, 12, generator=gen)
    y = torch.randint(4, (n,), generator=gen)
    is_minority = torch.tensor([False, True, False, True])
    model = small_model()
    x_new, attacked = get_method("aos").perturb(model, x, y, is_minority, {"p": p, "eps": EPS}, gen)
    return model, x, y, x_new, attacked, is_minority


def test_aos_attacks_only_minority_images_at_rate_p():
    _, x, y, x_new, attacked, is_minority = attack_batch(p=0.3)
    changed = (x_new != x).flatten(1).any(1)
    assert set(changed.nonzero().flatten().tolist()) <= set(attacked.tolist())
    assert is_minority[y[attacked]].all(), "a majority image was attacked"
    n_minority = int(is_minority[y].sum())
    expected, sd = 0.3 * n_minority, (n_minority * 0.3 * 0.7) ** 0.5
    assert abs(len(attacked) - expected) < 5 * sd  # binomial(n_minority, p)


def test_aos_moves_unclipped_pixels_by_exactly_eps_and_stays_in_range():
    _, x, _, x_new, attacked, _ = attack_batch()
    before, after = x[attacked], x_new[attacked]
    assert after.min() >= 0 and after.max() <= 1
    inside = (before > EPS) & (before < 1 - EPS)  # neither step direction reaches the clamp
    moved = (after - before).abs()[inside]
    gradient_zero = moved == 0  # a pixel with zero input gradient stays: sign(0) = 0
    assert gradient_zero.float().mean() < 0.01
    assert torch.allclose(moved[~gradient_zero], torch.full_like(moved[~gradient_zero], EPS), atol=1e-6)


def test_fgsm_raises_the_loss_of_the_perturbed_images():
    model = small_model()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(256, 1, 12, 12, generator=gen), torch.randint(4, (256,), generator=gen)
    x_adv = fgsm(model, x, y, 0.02)
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # the attack's view: train-mode BatchNorm
    with torch.no_grad():
        before = F.cross_entropy(functional_call(model, buffers, (x,)), y, reduction="none")
        after = F.cross_entropy(functional_call(model, buffers, (x_adv,)), y, reduction="none")
    assert after.mean() > before.mean()
    assert (after > before).float().mean() > 0.9


def test_fgsm_leaves_batchnorm_statistics_and_parameter_gradients_untouched():
    model = small_model()
    model.train()
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    fgsm(model, torch.rand(64, 1, 12, 12), torch.randint(4, (64,)), EPS)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), f"{name} changed"
    assert all((param.grad == 7.0).all() for param in model.parameters())


def test_aos_draws_repeat_for_a_seed():
    assert torch.equal(attack_batch(seed=5)[4], attack_batch(seed=5)[4])
    assert not torch.equal(attack_batch(seed=5)[4], attack_batch(seed=6)[4])


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "smote"}, "method.name='smote' is not one of: base, ros, aos"),
        ({"name": "aos", "p": 1.5, "eps": 0.1}, "method.p=1.5"),
        ({"name": "aos", "p": 0.5, "eps": -1}, "method.eps=-1"),
    ],
)
def test_bad_method_settings_raise(cfg, message):
    with pytest.raises(UsageError, match=message):
        validate_method(cfg)
