import numpy as np
import pytest
import torch

from purify_lib.attacks import ATTACKS, make_attack
from purify_lib.attacks.badnets import default_patch
from purify_lib.data import ImageSet
from purify_lib.errors import PurifyError
from purify_lib.metrics import triggered_test_set
from purify_lib.models import make_model

STATIC = ["badnets", "blended", "sig", "lf", "wanet"]


def test_badnets_patch_pixels(images):
    attack = make_attack("badnets")
    out = attack.apply(images.images)
    assert (out[:, :, 29:32, 29:32] == 255).all()
    assert torch.equal(out[:, :, :29, :], images.images[:, :, :29, :])
    assert torch.equal(out[:, :, :, :29], images.images[:, :, :, :29])


def test_badnets_generated_default_matches_trigger_file():
    from purify_lib.attacks.base import find_trigger, load_pattern

    path = find_trigger("trigger_image.png", None)
    if path is None:
        pytest.skip("BackdoorBench trigger file not available")
    assert torch.equal(torch.from_numpy(load_pattern(path)) > 0, default_patch() > 0)


def test_blended_is_convex_combination(images):
    attack = make_attack("blended", alpha=0.2)
    expected = (0.8 * images.images.float() + 0.2 * attack.pattern.float()).round()
    assert torch.equal(attack.apply(images.images).float(), expected)


def test_sig_adds_the_sinusoid_column_wise():
    attack = make_attack("sig")
    gray = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    out = attack.apply(gray).float() - 128
    columns = torch.arange(32).float()
    expected = (40 * torch.sin(2 * torch.pi * columns * 6 / 32)).round()
    assert torch.allclose(out[0, 0, 5], expected, atol=1)
    assert (out[0, :, 0] == out[0, :, 17]).all()  # constant down each column


def test_lf_adds_its_pattern_with_clipping():
    attack = make_attack("lf")
    zeros = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert torch.equal(attack.apply(zeros)[0], attack.pattern)
    full = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert (attack.apply(full) == 255).all()


def _poisons_without_setup(name: str) -> bool:
    """An attack that makes its trigger with nothing trained or set first (not TrojanNN, SSBA, LC)."""
    attack = make_attack(name)
    try:
        attack.apply(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    except PurifyError:
        return False
    return not attack.needs_clean_model


# From the registry, so a new attack is covered by what it declares: dirty-label ones, and those with a poison pool.
DIRTY_LABEL = [name for name, cls in ATTACKS.items() if not cls.clean_label and _poisons_without_setup(name)]
POOLED = [name for name in DIRTY_LABEL if "pool" in ATTACKS[name].fields()]


@pytest.mark.parametrize("name", DIRTY_LABEL)
@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5])
def test_dirty_label_exact_count_and_labels(images, name, rate):
    # Adaptive-Blend also stamps correctly labelled covers outside the poisons: without them here (its own test has them)
    attack = make_attack(name, **({"cover_ratio": 0.0} if "cover_ratio" in ATTACKS[name].fields() else {}))
    result = attack.poison(images, rate, seed=1)
    assert len(result.poisoned) == round(rate * len(images))
    assert (result.data.labels[result.poisoned] == 0).all()
    untouched = torch.ones(len(images), dtype=torch.bool)
    untouched[result.poisoned] = False
    assert torch.equal(result.data.labels[untouched], images.labels[untouched])
    assert torch.equal(result.data.images[untouched], images.images[untouched])
    assert not torch.equal(result.data.images[result.poisoned], images.images[result.poisoned])


@pytest.mark.parametrize("name", POOLED)
def test_dirty_label_pool_follows_backdoorbench_with_a_switch(images, name):
    """BackdoorBench draws poisons from every image (target-class ones keep their label); ``non_target`` excludes them."""
    default = make_attack(name).poison(images, 0.5, seed=1)
    assert (images.labels[default.poisoned] == 0).any() and (images.labels[default.poisoned] != 0).any()
    strict = make_attack(name, pool="non_target").poison(images, 0.5, seed=1)
    assert (images.labels[strict.poisoned] != 0).all()
    assert make_attack(name).params()["pool"] == "all" and make_attack(name, pool="non_target").params()["pool"] == "non_target"
    with pytest.raises(PurifyError, match="pool='some' is not one of all, non_target"):
        make_attack(name, pool="some")


def test_clean_label_sig_keeps_labels_and_poisons_target_only(images):
    attack = make_attack("sig")
    result = attack.poison(images, 0.05, seed=0)
    assert len(result.poisoned) == 10
    assert torch.equal(result.data.labels, images.labels)
    assert (images.labels[result.poisoned] == 0).all()


def test_lc_needs_clean_model_then_perturbs_within_eps(images):
    attack = make_attack("lc", steps=2)
    with pytest.raises(PurifyError, match="clean model"):
        attack.poison(images, 0.05)
    torch.manual_seed(0)
    attack.clean_model = make_model("preactresnet18", 10, width=4)
    result = attack.poison(images, 0.05, seed=0)
    assert torch.equal(result.data.labels, images.labels)
    changed = result.data.images[result.poisoned].int()
    original = images.images[result.poisoned].int()
    mask = attack.mask.expand_as(changed[0])
    assert torch.equal(changed[:, mask], attack.pattern.int()[mask].expand(len(changed), -1))  # the trigger, exactly
    budget = round(attack.eps * 255) + 1  # PGD works in [0, 1]; the uint8 rounding adds at most one level
    assert (changed[:, ~mask] - original[:, ~mask]).abs().max() <= budget
    assert (changed[:, ~mask] != original[:, ~mask]).any()


def test_lc_defaults_are_backdoorbench_s():
    attack = make_attack("lc")
    assert (attack.eps, attack.steps, attack.step_size, attack.model_eps) == (8 / 255, 100, 1.5 / 255, 8 / 255)
    board = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    for rows in (slice(0, 3), slice(29, 32)):
        for cols in (slice(0, 3), slice(29, 32)):
            assert (attack.pattern[:, rows, cols] == board).all() and attack.mask[0, rows, cols].all()
    assert int(attack.mask.sum()) == 36
    gray = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    triggered = attack.apply(gray)
    assert torch.equal(triggered.flip(3), attack.apply(gray.flip(3)))  # a flip leaves the trigger in place
    assert (triggered[:, :, 0, 1] == 0).all()  # the board's black squares are written too


def test_clean_label_rate_beyond_target_class_fails(images):
    with pytest.raises(PurifyError, match="target class holds 20"):
        make_attack("sig").poison(images, 0.2)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_rate_outside_unit_interval_fails(images, rate):
    with pytest.raises(PurifyError, match=r"outside \(0, 1\]"):
        make_attack("badnets").poison(images, rate)


def test_poisoning_is_seeded(images):
    attack = make_attack("badnets")
    assert torch.equal(attack.poison(images, 0.1, seed=3).poisoned, attack.poison(images, 0.1, seed=3).poisoned)
    assert not torch.equal(attack.poison(images, 0.1, seed=3).poisoned, attack.poison(images, 0.1, seed=4).poisoned)


def test_wanet_identity_at_zero_strength(images):
    attack = make_attack("wanet", strength=0.0)
    assert torch.equal(attack.apply(images.images), images.images)
    warped = make_attack("wanet").apply(images.images)
    assert not torch.equal(warped, images.images)
    assert (warped.int() - images.images.int()).abs().float().mean() < 60  # a warp, not noise


def test_wanet_batch_poisoning_counts():
    attack = make_attack("wanet")
    x = torch.rand(128, 3, 32, 32)
    y = torch.arange(128) % 10
    torch.manual_seed(0)
    out, labels = attack.poison_batch(x, y, 0.125)  # exactly 16 a batch: no fractional part to draw
    assert (labels[:16] == 0).all() and torch.equal(labels[16:], y[16:])
    assert not torch.equal(out[16:48], x[16:48])  # noise-mode samples, warped, labels kept
    assert torch.equal(out[48:], x[48:])


@pytest.mark.parametrize("rate", [0.005, 0.1])
def test_wanet_poisons_rate_times_batch_on_average(rate):
    """0.5% of 128 is 0.64 a batch: a truncated count would never poison at all."""
    attack = make_attack("wanet", cross_ratio=0)
    x, y = torch.zeros(128, 3, 32, 32), torch.ones(128, dtype=torch.long)
    torch.manual_seed(0)
    counts = torch.tensor([int((attack.poison_batch(x, y, rate)[1] == 0).sum()) for _ in range(2000)], dtype=torch.float)
    # the count is floor(128 rate) or one more; its mean is within 10 standard errors of 128 rate
    assert set(counts.unique().tolist()) <= {float(int(128 * rate)), float(int(128 * rate) + 1)}
    assert abs(counts.mean().item() - 128 * rate) < 0.1


def test_wanet_augmentation_follows_backdoorbench():
    attack = make_attack("wanet")
    assert attack.augments_after_poison and not make_attack("wanet", post_augment=False).augments_after_poison
    assert attack.params()["post_augment"] is True
    torch.manual_seed(0)
    x = torch.rand(2000, 3, 32, 32) + 1  # strictly positive, so zero fill marks moved pixels
    out = attack.augment(x)
    assert out.shape == x.shape
    zeros = (out == 0).flatten(1).any(1)
    flipped_only = torch.tensor([torch.equal(o, i) or torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    # crop at p 0.8 (a zero border unless the offset is 0, 1 in 121) and rotation at p 0.5:
    # untouched (save a flip) only with p 0.2 x 0.5 = 0.1, crop offset 0 aside
    assert 0.05 < flipped_only.float().mean() < 0.15
    assert zeros.float().mean() > 0.8


def test_triggered_test_set_excludes_target(images):
    triggered = triggered_test_set(images, make_attack("badnets"))
    assert len(triggered) == 180 and (triggered.labels != 0).all()


def test_unknown_attack_and_missing_trigger_fail():
    with pytest.raises(PurifyError, match="unknown attack 'nope'; allowed: adaptive_blend, badnets, blended"):
        make_attack("nope")
    with pytest.raises(PurifyError, match="does not exist"):
        make_attack("blended", trigger_path="/no/such/file.png")
    with pytest.raises(PurifyError, match="bad parameters for attack 'badnets'"):
        make_attack("badnets", colour=3)


def test_every_attack_is_registered():
    assert set(STATIC) | {"lc", "adaptive_blend", "trojannn", "iad", "ssba"} == set(ATTACKS)


def test_adaptive_blend_poisons_and_covers_with_half_the_pieces_at_train_opacity(images):
    attack = make_attack("adaptive_blend")
    result = attack.poison(images, 0.1, seed=0)
    changed = torch.nonzero((result.data.images != images.images).flatten(1).any(1)).squeeze(1)
    covers = changed[~torch.isin(changed, result.poisoned)]
    assert len(result.poisoned) == 20 and len(covers) == 20  # cover_ratio 1: as many covers as poisons
    assert (result.data.labels[result.poisoned] == 0).all()
    assert torch.equal(result.data.labels[covers], images.labels[covers])  # covers keep their labels
    blend = ((1 - 0.15) * images.images.float() + 0.15 * attack.pattern.float()).round()
    for index in changed.tolist():
        # on each 8x8 piece the image is either untouched or the 0.15 blend; 8 of the 16 pieces carry the trigger
        pieces = 0
        for row in range(0, 32, 8):
            for col in range(0, 32, 8):
                piece = result.data.images[index, :, row : row + 8, col : col + 8].float()
                if torch.equal(piece, blend[index, :, row : row + 8, col : col + 8]) and not torch.equal(piece, images.images[index, :, row : row + 8, col : col + 8].float()):
                    pieces += 1
                else:
                    assert torch.equal(piece, images.images[index, :, row : row + 8, col : col + 8].float())
        assert pieces == 8
    # the test trigger is the whole image at the higher opacity 0.2, unlike any training poison
    expected = (0.8 * images.images.float() + 0.2 * attack.pattern.float()).round()
    assert torch.equal(attack.apply(images.images).float(), expected)


def test_trojannn_optimises_a_bounded_trigger_inside_its_mask():
    attack = make_attack("trojannn", steps=30)
    with pytest.raises(PurifyError, match="clean model"):
        attack.prepare(None, "cpu")
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, 4).eval()
    attack.clean_model = model
    attack.prepare(None, "cpu")
    assert not attack.trigger[:, ~attack.mask[0]].any()  # nothing outside the mask
    assert int(attack.trigger.max()) <= round(attack.eps * 255)
    neurons = attack.neurons
    assert torch.equal(neurons, model.head.weight.abs().sum(0).topk(2).indices)  # the most connected features
    with torch.no_grad():
        cost = lambda x: ((model.features(x)[:, neurons] - 100) ** 2).sum().item()
        assert cost(attack.trigger[None].float() / 255) < cost(torch.zeros(1, 3, 32, 32))
    full = torch.full((1, 3, 32, 32), 250, dtype=torch.uint8)
    assert (attack.apply(full)[0][:, attack.mask[0]] >= 250).all()  # added, saturating at 255
    clone = make_attack("trojannn")
    clone.load_state_dict(attack.state_dict())
    assert torch.equal(clone.apply(full), attack.apply(full))


def test_iad_triggers_depend_on_the_input_and_cross_samples_keep_labels(images):
    attack = make_attack("iad", channels=4, mask_epochs=1, batch_size=50)
    with pytest.raises(PurifyError, match="prepare"):
        attack.poison_batch(images.images[:10].float() / 255, images.labels[:10], 0.1)
    attack.prepare(images, "cpu")
    x, y = images.images[:100].float() / 255, images.labels[:100]
    before = [p.detach().clone() for p in attack.generator.parameters()]
    out, labels = attack.poison_batch(x, y, 0.2)
    assert out.shape == x.shape
    assert (labels[:20] == 0).all() and torch.equal(labels[20:], y[20:])  # 20 poisons, then cross and clean keep labels
    assert torch.equal(out[40:], x[40:])  # 20 cross-trigger samples, then the rest untouched
    out.sum().backward()
    attack.after_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, attack.generator.parameters()))  # G learns with the classifier
    triggered = attack.apply(images.images[:2])
    residual = triggered.float() - images.images[:2].float()
    assert not torch.equal(residual[0], residual[1])
    # the same image stamped with the other image's trigger differs from its own: the trigger is input-specific
    with torch.no_grad():
        own = attack.stamp(x[:1])
        other = attack.stamp(x[:1], x[1:2])
    assert not torch.allclose(own, other)
    clone = make_attack("iad", channels=4, mask_epochs=1)
    clone.load_state_dict(attack.state_dict())
    assert torch.equal(clone.apply(images.images[:5]), attack.apply(images.images[:5]))


def test_ssba_is_sample_specific_and_within_its_invisibility_bound(images):
    attack = make_attack("ssba", channels=4, steps=5, max_residual=0.05)
    with pytest.raises(PurifyError, match="no trained encoder"):
        attack.apply(images.images[:2])
    state = attack.build_asset(images, "cpu")
    out = attack.apply(images.images)
    change = out.int() - images.images.int()
    assert change.abs().max() <= round(0.05 * 255) + 1  # x + 0.05 tanh(r), rounded to uint8
    assert not torch.equal(change[0], change[1])  # each image gets its own residual
    assert set(attack.asset_report()) == {"bit_accuracy", "psnr_db", "max_pixel_change"}
    result = attack.poison(images, 0.1, seed=0)
    assert len(result.poisoned) == 20 and (result.data.labels[result.poisoned] == 0).all()
    clone = make_attack("ssba", channels=4, steps=5, max_residual=0.05)
    clone.load_asset(state)
    assert torch.equal(clone.apply(images.images[:5]), out[:5])


def test_iad_diversity_gradient_stays_finite_when_two_outputs_coincide():
    from purify_lib.attacks.iad import diversity

    x1, x2 = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    out = torch.zeros(4, 1, 8, 8, requires_grad=True)  # two saturated masks: exactly equal
    diversity(x1, x2, out, out.clone()).backward()
    assert torch.isfinite(out.grad).all()


def test_iad_generator_steps_through_the_loss_scaler_with_the_classifier(images, monkeypatch):
    """Under fp16 the diversity term must be scaled with the classifier's loss (one backward pass) and the
    generator stepped through the scaler, before it updates, so a skipped step skips both."""
    import purify_lib.train as train_module
    from purify_lib.models import make_model
    from purify_lib.train import Recipe, train_model

    events = []

    class FakeScaler:
        def __init__(self, *args, **kwargs):
            pass

        def scale(self, loss):
            events.append(("scale", loss.requires_grad))
            return loss

        def step(self, optimizer):
            events.append(("step", "generator" if optimizer is attack.optimizer else "classifier"))
            optimizer.step()

        def update(self):
            events.append(("update",))

    monkeypatch.setattr(train_module.torch.amp, "GradScaler", FakeScaler)
    attack = make_attack("iad", channels=2, mask_epochs=0, batch_size=50)
    attack.prepare(images, "cpu")
    seen = []
    real_extra = attack.extra_loss
    monkeypatch.setattr(attack, "extra_loss", lambda: seen.append(1) or real_extra())
    train_model(make_model("preactresnet18", 10, width=2), images.subset(torch.arange(100)), Recipe(epochs=1, batch_size=50, augment=False),
                attack, 0.2, progress=False, precision="fp32")
    step = [("scale", True), ("step", "classifier"), ("step", "generator"), ("update",)]
    assert events == step * 2 and len(seen) == 2
    assert attack.extra_loss() is None  # each batch's term is taken once


def test_iad_lets_deterministic_mode_warn_instead_of_stopping(images):
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.warns(UserWarning, match="iad: deterministic mode switched to warn_only"):
            make_attack("iad", channels=2, mask_epochs=0).prepare(images, "cpu")
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
