"""The methods: what each does to the training set, a batch, the loss or the prediction."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_config
from torch.func import functional_call

from aos_bench.checks import validate as check_values
from aos_bench.errors import UsageError
from aos_bench.methods import (
    METHODS,
    balanced_softmax,
    class_weights,
    fgsm,
    focal,
    frozen,
    get_method,
    keep_all,
    ldam_drw,
    ldam_margins,
    prior_correction,
    random_oversample,
    random_undersample,
    reweighted_ce,
    smote,
)
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
    perturb, cfg = get_method("aos").perturb, {"p": p, "eps": EPS}
    x_new, attacked = perturb.batch(model, x, y, is_minority, cfg, perturb.draw(n, cfg, gen))
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
    x_adv = fgsm(frozen(model), x, y, 0.02)
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
    fgsm(frozen(model), torch.rand(64, 1, 12, 12), torch.randint(4, (64,)), EPS)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), f"{name} changed"
    assert all((param.grad == 7.0).all() for param in model.parameters())


def test_aos_draws_repeat_for_a_seed():
    assert torch.equal(attack_batch(seed=5)[4], attack_batch(seed=5)[4])
    assert not torch.equal(attack_batch(seed=5)[4], attack_batch(seed=6)[4])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=aos", "method.steps=0"], "method.steps=0: a whole number >= 1"),
        (["method=aos", "method.targeted=yes"], "method.targeted=yes: one of: true, false"),
        (["method=reweight", "method.beta=1.0"], r"method.beta=1.0: null \(inverse frequency\), or a number in \[0, 1\)"),
        (["method=reweight", "method.lr_scale=0"], r"method.lr_scale=0: a number > 0 \(times the recipe's train.lr\)"),
        (["method=focal", "method.gamma=two"], "method.gamma=two: a number >= 0"),
        (["method=ldam_drw", "method.s=0"], "method.s=0: a number > 0"),
        (["method=smote", "method.k=0"], "method.k=0: a whole number >= 1"),
    ],
)
def test_bad_method_settings_raise(overrides, message):
    with pytest.raises(UsageError, match=message):
        check_values(make_config("dataset=synthetic", *overrides))


def test_an_unknown_method_name_lists_the_methods():
    with pytest.raises(UsageError, match=f"method.name=mixup: one of: {', '.join(METHODS)}"):
        check_values(make_config("dataset=synthetic", "method.name=mixup"))


def test_rus_cuts_every_class_to_the_smallest_without_repeats():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([50, 7, 20, 3])])
    positions = random_undersample(labels, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[positions]).tolist() == [3, 3, 3, 3]
    assert len(set(positions.tolist())) == len(positions), "an image was kept twice"
    assert torch.equal(positions[labels[positions] == 3].sort().values, (labels == 3).nonzero().flatten())


def test_smote_images_lie_on_a_segment_between_two_images_of_their_class():
    gen = torch.Generator().manual_seed(0)
    sizes = [30, 8, 12]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    x = torch.randint(256, (len(y), 1, 6, 6), generator=gen, dtype=torch.uint8)
    new_x, new_y = smote(x, y, {"k": 5}, seed=0)
    assert torch.bincount(new_y).tolist() == [30, 30, 30]
    assert torch.equal(new_x[: len(x)], x) and torch.equal(new_y[: len(y)], y)  # the originals first, unchanged
    inside = []
    for image, c in zip(new_x[len(x) :].float().flatten(1), new_y[len(y) :], strict=True):
        members = x[y == c].float().flatten(1)
        best = (math.inf, None)
        for i in range(len(members)):
            for j in range(len(members)):
                if i == j:
                    continue
                a, b = members[i], members[j]
                lam = min(1.0, max(0.0, float(((image - a) @ (b - a)) / ((b - a) @ (b - a)))))  # nearest point
                best = min(best, (float((image - (a + lam * (b - a))).abs().max()), lam), key=lambda t: t[0])
        assert best[0] <= 1.0, f"a class-{int(c)} SMOTE image is {best[0]:.1f} grey levels off every segment of its class"
        inside.append(0.02 < best[1] < 0.98)
    assert sum(inside) > 0.8 * len(inside), "SMOTE images should lie inside their segments, not on their ends"


def hand_ce(row: list[float], label: int) -> float:
    """-log softmax(row)[label], in plain floats."""
    return -math.log(math.exp(row[label]) / sum(math.exp(v) for v in row))


LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, -1.0, 2.0]]
LABELS = [0, 2, 1, 2]
COUNTS = [100, 10, 4]


@pytest.mark.parametrize("beta", [None, 0.99])
def test_reweighted_loss_equals_a_hand_computation(beta):
    raw = [1 / n for n in COUNTS] if beta is None else [(1 - beta) / (1 - beta**n) for n in COUNTS]
    w = [3 * v / sum(raw) for v in raw]
    expected = sum(w[y] * hand_ce(row, y) for row, y in zip(LOGITS, LABELS, strict=True)) / sum(w[y] for y in LABELS)
    got = reweighted_ce(torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(COUNTS), {"beta": beta}, 0.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert class_weights(torch.tensor(COUNTS), beta).tolist() == pytest.approx(w, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_equals_a_hand_computation(gamma):
    terms = []
    for row, y in zip(LOGITS, LABELS, strict=True):
        p = math.exp(-hand_ce(row, y))
        terms.append(-((1 - p) ** gamma) * math.log(p))
    got = focal(torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(COUNTS), {"gamma": gamma}, 0.0)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_ldam_margins_scale_as_n_to_the_minus_quarter():
    margins = ldam_margins(torch.tensor([16, 81, 256, 1]), max_m=0.5)
    assert margins.tolist() == pytest.approx([0.5 / 2, 0.5 / 3, 0.5 / 4, 0.5], rel=1e-6)


def test_ldam_drw_subtracts_the_true_class_margin_and_reweights_only_after_drw_start():
    cfg = {"max_m": 0.5, "s": 2.0, "beta": 0.99, "drw_start": 0.8}
    m = [0.5 * (4 / n) ** 0.25 for n in COUNTS]
    shifted = [[cfg["s"] * (v - (m[y] if j == y else 0)) for j, v in enumerate(row)] for row, y in zip(LOGITS, LABELS, strict=True)]
    args = (torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(COUNTS), cfg)
    plain = sum(hand_ce(row, y) for row, y in zip(shifted, LABELS, strict=True)) / len(LABELS)
    assert ldam_drw(*args, 0.79).item() == pytest.approx(plain, rel=1e-5)
    raw = [(1 - 0.99) / (1 - 0.99**n) for n in COUNTS]
    w = [3 * v / sum(raw) for v in raw]
    weighted = sum(w[y] * hand_ce(row, y) for row, y in zip(shifted, LABELS, strict=True)) / sum(w[y] for y in LABELS)
    assert ldam_drw(*args, 0.8).item() == pytest.approx(weighted, rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_balanced_softmax_shifts_the_logits_by_the_log_priors(tau):
    # Ren et al.'s form: -log(n_y^tau e^z_y / sum_j n_j^tau e^z_j)
    expected = [
        -math.log(COUNTS[y] ** tau * math.exp(row[y]) / sum(n**tau * math.exp(v) for n, v in zip(COUNTS, row, strict=True)))
        for row, y in zip(LOGITS, LABELS, strict=True)
    ]
    got = balanced_softmax(torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(COUNTS), {"tau": tau}, 0.0)
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_thresholding_divides_the_probabilities_by_the_priors():
    logits = torch.tensor([[2.0, 0.0, 0.5], [0.3, 0.2, 0.1]])
    counts = torch.tensor(COUNTS)
    priors = counts / counts.sum()
    scores = prior_correction(logits, counts, {})
    expected = logits.softmax(1) / priors
    assert torch.allclose(scores.softmax(1), expected / expected.sum(1, keepdim=True), atol=1e-6)
    assert logits.argmax(1).tolist() == [0, 0] and scores.argmax(1).tolist() == [2, 2]  # the rare class wins


@pytest.mark.parametrize("steps", [1, 4])
def test_multi_step_aos_stays_within_eps_of_the_clean_image(steps):
    model = small_model()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(128, 1, 12, 12, generator=gen), torch.randint(4, (128,), generator=gen)
    x_adv = fgsm(frozen(model), x, y, EPS, steps=steps)
    moved = (x_adv - x).abs()
    assert moved.max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    inside = (x > EPS) & (x < 1 - EPS)
    assert (moved[inside] > EPS / steps + 1e-6).any() == (steps > 1)  # several steps add up; one step is eps exactly


def test_targeted_aos_moves_toward_the_most_confused_majority_class():
    model = small_model()
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(256, 1, 12, 12, generator=gen), torch.full((256,), 1)
    majority = torch.tensor([True, False, True, False])
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.no_grad():
        logits = functional_call(model, buffers, (x,))
    target = logits.masked_fill(~majority, -torch.inf).argmax(1)
    x_adv = fgsm(frozen(model), x, y, 0.02, steps=2, majority=majority)
    with torch.no_grad():
        after = F.cross_entropy(functional_call(model, buffers, (x_adv,)), target, reduction="none")
    before = F.cross_entropy(logits, target, reduction="none")
    assert set(target.tolist()) <= {0, 2}
    assert (after < before).float().mean() > 0.9
