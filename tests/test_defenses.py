"""Defense properties on a tiny model, and ASR falling on a tiny backdoored model trained here."""
import copy

import numpy as np
import pytest
import torch

from purify_lib.attacks import make_attack
from purify_lib.data import ImageSet, balanced_subset, load_dataset, make_splits
from purify_lib.defenses import DEFENSES, parameters_of, purify
from purify_lib.defenses.nft import lower_bound
from purify_lib.defenses.pad import sce_scores
from purify_lib.errors import PurifyError
from purify_lib.metrics import Evaluator, der
from purify_lib.models import get_head, make_model
from purify_lib.train import Recipe, train_model


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory):
    """BadNets at 10% (a 6x6 checkerboard patch) on 20,000 CIFAR-10 images, width 16, 8 epochs.

    Trained under the default precision (bf16 where the CPU has it: about 3 minutes on a
    2-core AVX-512 BF16 machine; fp32 elsewhere, slower but the same kind of model).  The test
    needs a victim that has really learned both tasks (ACC >= 60%, ASR >= 90%), so that a
    defense that works passes by a wide margin on any machine and one that does not fails on
    every machine.  The larger patch makes the backdoor certain at this budget.  Fewer images do not
    keep that margin: on an Intel Xeon with AMX, 12,000 images trained in 157 s to ACC 63.2%, against
    70.7% in 240 s for these 20,000 (ASR 100% both).
    """
    from PIL import Image

    pattern = np.zeros((32, 32, 3), dtype=np.uint8)
    for i in range(6):
        for j in range(6):
            pattern[24 + i, 24 + j] = 255 if (i + j) % 2 == 0 else 1
    trigger = tmp_path_factory.mktemp("trigger") / "checkerboard.png"
    Image.fromarray(pattern).save(trigger)
    dataset = load_dataset("cifar10")
    splits = make_splits(dataset, seed=0, reserve_fraction=0.02, train_size=20000, test_size=1000)
    attack = make_attack("badnets", trigger_path=trigger)
    poisoned = attack.poison(splits.train, 0.1, seed=0)
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, width=16)
    train_model(model, poisoned.data, Recipe(epochs=8, lr=0.1, schedule="onecycle"), progress=False)
    evaluator = Evaluator(splits.test, attack)
    before = evaluator(model)
    assert before["acc"] >= 60 and before["asr"] >= 90, f"the test victim is too weak to test a defense on: {before}"
    return dict(model=model, clean=splits.reserve, poisoned=poisoned, evaluator=evaluator, before=before)


@pytest.fixture
def small():
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, width=4)
    generator = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(64) % 10)
    return model, data


def test_fst_keeps_head_norm_after_every_step(small):
    model, data = small
    original_norm = get_head(model)[1].weight.norm().item()
    norms = []
    from purify_lib.defenses import finetune

    real_tune = finetune.tune

    def spying_tune(*args, after_step, **kwargs):
        def spy(net):
            after_step(net)
            norms.append(get_head(net)[1].weight.norm().item())
        return real_tune(*args, after_step=spy, **kwargs)

    finetune.tune = spying_tune
    try:
        result = purify("fst", model, data, epochs=2, batch_size=16)
    finally:
        finetune.tune = real_tune
    assert len(norms) == 8
    assert all(abs(n - original_norm) < 1e-4 for n in norms)
    unprojected = purify("fst", model, data, epochs=2, batch_size=16, project_head=False)
    assert abs(get_head(unprojected.model)[1].weight.norm().item() - original_norm) > 1e-3
    assert result.model is not model


def test_lp_tunes_only_the_head_and_by_default_reestimates_batchnorm(small):
    """The official ft.py calls net.train() in LP too: BatchNorm statistics move, weights do not."""
    model, data = small
    result = purify("lp", model, data, epochs=2, batch_size=16).model
    before, after = model.state_dict(), result.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"head.weight", "head.bias"} <= changed
    assert all(k.startswith("head.") or k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    frozen = purify("lp", model, data, epochs=2, batch_size=16, frozen_bn=True).model.state_dict()
    assert {k for k in before if not torch.equal(before[k], frozen[k])} == {"head.weight", "head.bias"}


@pytest.mark.parametrize("name", ["ft", "lp", "fe_tuning", "ft_init"])
def test_fst_family_rescales_the_head_as_the_official_code_does(small, name):
    model, data = small
    original_norm = model.head.weight.norm().item()
    projected = purify(name, model, data, epochs=1, batch_size=16, lr=0.5).model  # a large step, so the norm would move
    assert abs(projected.head.weight.norm().item() - original_norm) < 1e-4
    unprojected = purify(name, model, data, epochs=1, batch_size=16, lr=0.5, project_head=False).model
    assert abs(unprojected.head.weight.norm().item() - original_norm) > 1e-3


def test_fe_tuning_leaves_the_reinitialised_head_fixed(small):
    model, data = small
    result = purify("fe_tuning", model, data, epochs=1, batch_size=16)
    reference = purify("fe_tuning", model, data, epochs=1, batch_size=16, lr=1e-12)  # same re-init, ~no update
    assert torch.equal(result.model.head.weight, reference.model.head.weight)
    assert not torch.equal(result.model.head.weight, model.head.weight)
    assert not torch.equal(result.model.conv1.weight, model.conv1.weight)


def test_ft_init_reinitialises_and_tunes_everything(small):
    model, data = small
    result = purify("ft_init", model, data, epochs=1, batch_size=16).model
    assert not torch.equal(result.head.weight, model.head.weight)
    assert not torch.equal(result.conv1.weight, model.conv1.weight)


def test_nft_leaves_weights_untouched_and_masks_in_bounds(small):
    model, data = small
    result = purify("nft", model, data, steps=6, batch_size=16, lr=0.5)
    masks, floors = result.extra["masks"], result.extra["floors"]
    assert floors[0] == pytest.approx(0.8 * torch.exp(torch.tensor(-0.5)).item())
    for mask, floor in zip(masks, floors):
        assert (mask >= floor - 1e-6).all() and (mask <= 1 + 1e-6).all()
    assert any((mask < 1).any() for mask in masks)
    before, after = dict(model.named_parameters()), dict(result.model.named_parameters())
    norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for name, tensor in before.items():
        owner = name.rsplit(".", 1)[0]
        if owner in norms and name.endswith("weight"):
            mask = masks[norms.index(owner)]
            assert torch.allclose(after[name], tensor * mask), name
        else:
            assert torch.equal(after[name], tensor), name


def test_fp_prunes_head_columns_of_the_least_active_features_and_keeps_them_pruned(small):
    model, data = small
    result = purify("fp", model, data, epochs=2, acc_ratio=1.0, prune_step=0.1, batch_size=16, lr=0.05)
    pruned = result.extra["pruned"]
    assert 0 < pruned < result.extra["channels"]  # acc_ratio 1 lets accuracy fall all the way: every step but the last is kept
    zero_columns = (result.model.head.weight == 0).all(0)
    assert int(zero_columns.sum()) == pruned
    with torch.no_grad():
        activity = torch.cat([model.eval().features(data.images.float() / 255)]).mean(0)
    assert set(torch.nonzero(zero_columns).squeeze(1).tolist()) == set(activity.argsort()[:pruned].tolist())


def test_nc_anomaly_index_flags_only_a_small_outlier():
    from purify_lib.defenses.nc import anomaly

    index, flagged = anomaly([100.0, 104.0, 96.0, 101.0, 99.0, 98.0, 102.0, 97.0, 103.0, 20.0])
    assert flagged == [9] and index[9] > 2
    assert anomaly([100.0, 104.0, 96.0, 101.0, 99.0, 98.0, 102.0, 97.0, 103.0, 100.0])[1] == []
    assert anomaly([100.0, 104.0, 96.0, 101.0, 99.0, 98.0, 102.0, 97.0, 103.0, 300.0])[1] == []  # large norms are not triggers


def test_nc_returns_the_victim_unchanged_when_nothing_is_flagged(small, monkeypatch):
    import importlib

    nc_module = importlib.import_module("purify_lib.defenses.nc")  # the package's ``nc`` is the function
    model, data = small
    monkeypatch.setattr(nc_module, "anomaly", lambda norms: ([0.0] * len(norms), []))
    result = purify("nc", model, data, reverse_epochs=1, epochs=1)
    assert result.extra["flagged"] == [] and len(result.extra["mask_l1"]) == 10
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)


def test_sau_perturbation_stays_in_its_ball_and_batchnorm_statistics_stay_the_victim_s(small):
    from purify_lib.defenses.sau import shared_perturbation

    model, data = small
    model.eval()
    x, y = data.images[:16].float() / 255, data.labels[:16]
    delta = shared_perturbation(model, copy.deepcopy(model), x, y, 0.2, 5, 0.2, 0.01, 1.0)
    assert delta.abs().max() <= 0.2 + 1e-6
    result = purify("sau", model, data, epochs=2, batch_size=16, lr=1e-3)
    norm_before = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    norm_after = [m.running_mean for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(norm_before, norm_after))  # tuned in eval mode, as SAU's code does
    assert not torch.equal(result.model.head.weight, model.head.weight)


def test_rnp_only_zeroes_batchnorm_weights_of_the_victim(small):
    model, data = small
    # recover_lr 0.5 moves the masks well below 1 in two epochs; at RNP's 0.2 the lowest ended within 0.001 of the
    # threshold, so whether any channel was pruned turned on the thread count
    result = purify("rnp", model, data, unlearn_epochs=2, recover_epochs=2, batch_size=16, threshold=0.99, recover_lr=0.5)
    masks = result.extra["masks"]
    assert all(((m >= 0) & (m <= 1)).all() for m in masks)
    assert result.extra["pruned"] == sum(int((m <= 0.99).sum()) for m in masks) > 0
    norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)]
    before, after = model.state_dict(), result.model.state_dict()
    for name, tensor in before.items():
        owner, leaf = name.rsplit(".", 1)
        if owner in norms and leaf == "weight":
            cut = masks[norms.index(owner)] <= 0.99
            assert (after[name][cut] == 0).all() and torch.equal(after[name][~cut], tensor[~cut]), name
        else:
            assert torch.equal(after[name], tensor), name


def test_nft_bound_functions():
    assert lower_bound("exp", 1, 17) > lower_bound("exp", 5, 17) > 0
    assert lower_bound("none", 3, 17) == 0
    assert lower_bound("constant", 1, 17) == lower_bound("constant", 9, 17)
    with pytest.raises(PurifyError, match="unknown NFT bound 'cubic'"):
        purify("nft", make_model("preactresnet18", 10, width=4), ImageSet(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])), bound="cubic")


def test_d3_keeps_norm_and_moves_away(small):
    model, data = small
    original = model.head.weight.detach().clone()
    result = purify("d3", model, data, epochs=2, batch_size=16)
    moved = result.model.head.weight
    assert moved.norm().item() == pytest.approx(original.norm().item(), rel=1e-5)
    assert (moved - original).norm() > 0.5 * original.norm()
    assert result.extra["distance"] == pytest.approx((moved - original).norm().item(), rel=1e-4)
    with pytest.raises(PurifyError, match="D3 cannot find layer.*nope.*top-level modules are: normalize, conv1"):
        purify("d3", model, data, layers=("nope",))


def test_pad_keeps_exactly_n_c_per_class_with_lowest_sce(small):
    from purify_lib.defenses.pad import select_low_sce

    model, data = small
    keep = select_low_sce(model, data, n_c=3)
    assert (data.labels[keep].bincount(minlength=10) == 3).all()
    scores = sce_scores(model, data)
    for c in range(10):
        members = torch.nonzero(data.labels == c).squeeze(1)
        kept = set(keep.tolist()) & set(members.tolist())
        worst_kept = max(scores[list(kept)])
        best_dropped = min(scores[[m for m in members.tolist() if m not in kept]])
        assert worst_kept <= best_dropped


@pytest.mark.parametrize("arch", ["preactresnet18", "resnet18"])
def test_activation_clips_bound_post_relu_activations(arch):
    """MM-BD clips ReLU outputs: every clipped tensor must be non-negative, so an upper bound stays an upper bound."""
    from purify_lib.defenses.mmbd import ActivationClip, insert_clips

    torch.manual_seed(0)
    model = make_model(arch, 10, width=4).eval()
    with torch.no_grad():  # negative BatchNorm scales, which turned a pre-BatchNorm clip into a lower bound
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(-1, 1)
    clips = insert_clips(model)
    assert len(clips) == 3
    seen = []
    hooks = [clip.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0])) for clip in clips]
    model(torch.rand(4, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert len(seen) == 3 and all((x >= 0).all() and (x > 0).any() for x in seen)
    assert all(isinstance(m, ActivationClip) for m in clips)


def test_pad_ft_consistency_is_against_the_unaugmented_view(small, monkeypatch):
    """Eq. 3: CE(softmax F(gamma(x)), softmax F(x)), the original's distribution a fixed target; Eq. 4's SCE on x."""
    import importlib

    pad = importlib.import_module("purify_lib.defenses.pad")  # the module; the package re-exports a function of that name

    augmented = torch.randn(5, 10, requires_grad=True)
    original = torch.randn(5, 10, requires_grad=True)
    term = pad.consistency(augmented, original)
    expected = torch.nn.functional.cross_entropy(augmented, torch.softmax(original, 1), reduction="none")
    assert torch.allclose(term, expected, atol=1e-6)
    term.sum().backward()
    assert original.grad is None and augmented.grad.abs().sum() > 0

    model, data = small
    calls = []
    real_consistency, real_sce = pad.consistency, pad.sce
    monkeypatch.setattr(pad, "_views", lambda x: torch.zeros_like(x))  # every augmented view the same image
    monkeypatch.setattr(pad, "consistency", lambda a, o: calls.append(("consistency", a, o)) or real_consistency(a, o))
    monkeypatch.setattr(pad, "sce", lambda logits, y, alpha=0.5: calls.append(("sce", logits)) or real_sce(logits, y, alpha))
    pad.pad_ft(model, data, n_c=3, clip_epochs=1, epochs=1, batch_size=30)
    tuning = [c for c in calls if c[0] == "consistency"]
    assert tuning
    for _, aug, orig in tuning:
        assert torch.allclose(aug, aug[:1].expand_as(aug))  # the views: one image, one output
        assert not torch.allclose(orig, orig[:1].expand_as(orig))  # the originals: distinct images
    sce_on_tuning = [c[1] for c in calls if c[0] == "sce" and c[1].requires_grad]
    assert all(torch.equal(logits, orig) for logits, (_, _, orig) in zip(sce_on_tuning, tuning))


def test_d3_hinge_per_sample_or_on_the_mean(small):
    model, data = small
    # eps near an untrained model's CE (ln 10), so some samples sit below it and some above
    per_sample = purify("d3", model, data, epochs=1, batch_size=32, lmd=10.0, eps=2.3)
    on_mean = purify("d3", model, data, epochs=1, batch_size=32, lmd=10.0, eps=2.3, hinge="mean")
    assert per_sample.params["hinge"] == "per_sample" and on_mean.params["hinge"] == "mean"
    assert not torch.equal(per_sample.model.conv1.weight, on_mean.model.conv1.weight)
    with pytest.raises(PurifyError, match="unknown D3 hinge 'max'; allowed: mean, per_sample"):
        purify("d3", model, data, hinge="max")


def test_ft_sam_rate_cycles_every_200_steps_as_backdoorbench_steps_it(small, monkeypatch):
    import importlib

    ftsam = importlib.import_module("purify_lib.defenses.ftsam")
    seen = {}
    real_tune = ftsam.tune
    monkeypatch.setattr(ftsam, "tune", lambda *a, schedule, **k: seen.setdefault("schedule", schedule) and real_tune(*a, schedule=schedule, **k))
    model, data = small
    purify("ft_sam", model, data, epochs=1, batch_size=32)
    multiplier = seen["schedule"]
    assert multiplier(0) == pytest.approx(1) and multiplier(100) == pytest.approx(0, abs=1e-12)
    assert multiplier(200) == pytest.approx(1) and multiplier(50) == pytest.approx(0.5)
    seen.clear()
    purify("ft_sam", model, data, epochs=1, batch_size=32, lr_period=None)
    assert seen["schedule"] == "cosine"


def test_der_formula():
    assert der({"acc": 90, "asr": 100}, {"acc": 90, "asr": 0}) == 1.0
    assert der({"acc": 90, "asr": 100}, {"acc": 80, "asr": 100}) == pytest.approx(0.45)
    assert der({"acc": 90, "asr": 10}, {"acc": 95, "asr": 20}) == 0.5


def test_bad_defense_input(small):
    model, data = small
    with pytest.raises(PurifyError, match="unknown defense 'magic'; allowed: anp, d3"):
        purify("magic", model, data)
    with pytest.raises(PurifyError, match="unknown parameter.*alpah.*for defense 'fst'; allowed: alpha"):
        purify("fst", model, data, alpah=0.3)
    with pytest.raises(PurifyError, match="empty defense set"):
        purify("ft", model, data.subset([]))
    with pytest.raises(PurifyError, match="at least 2 classes; got 1"):
        purify("ft", model, data.subset(torch.nonzero(data.labels == 3).squeeze(1)))

    class Headless(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 10, 32)

        def forward(self, x):
            return self.body(x).flatten(1)

    with pytest.raises(PurifyError, match="no linear head; looked for attributes head, linear, fc, classifier"):
        purify("fst", Headless(), data)




# Defenses that take this victim's ASR from 100% far under the bound at their ``tests`` budgets (declared beside each defense), on every
# test victim measured: FST 0.7% and 0.0%, FT-SAM 6.6% and 0.0%, MM-BD 1.7% and 15.1% (two victims
# of this recipe: dirty-label poisons drawn from the other classes, then from every image; one run
# each with one thread on a 2-core AMD EPYC).  A bound of 40% leaves 25 points or more of margin.
LOWERS_ASR_IN_CI = ("fst", "ft_sam", "mmbd")
ASR_BOUND = 40.0
# The others are not a CI assertion, because their outcome at these budgets is not stable across
# victims of the same recipe or sits near any bound one could choose; these only have to run. Measured at
# their earlier ``tests`` budgets (I-BAU at 2 rounds, since cut to 1 round of 2 fixed-point steps, and NC's,
# SAU's and ANP's cut to about half, for CI time): I-BAU 2.4% then 44.4%, D3
# 100% then 7.2%, NAD 50.1% then 11.3% (ACC 34-41%), FT 26.6% then 96.8% and FE-tuning 40.9% then
# 97.7% (the second victim also ran after the FST family began rescaling the head in every mode, as
# the official code does); LP, FT-init, NFT, ANP, PAD and PAD-FT stay at 84-100% on both.  Whether
# they purify is shown where their papers' budgets run: notebook 06 and scripts/run_defenses.py on
# the cpu-profile victims.  Here they only have to run and report what they did (pytest -rP).


def _run_on_test_victim(backdoored, name):
    poisoned = DEFENSES[name].data == "poisoned"
    data = backdoored["poisoned"].data if poisoned else backdoored["clean"]
    extra = {"poisoned": backdoored["poisoned"].poisoned} if poisoned else {}
    victim = copy.deepcopy(backdoored["model"])
    result = purify(name, victim, data, backdoored["evaluator"], **DEFENSES[name].budget("tests"), **extra)
    after = backdoored["evaluator"](result.model)
    before = backdoored["before"]
    # shown with pytest -rP: what each defense did to the test victim on the machine that ran it
    print(f"{name}: ACC {before['acc']:.1f} -> {after['acc']:.1f}, ASR {before['asr']:.1f} -> {after['asr']:.1f}")
    assert result.history[-1]["asr"] == pytest.approx(after["asr"])
    assert result.seconds > 0
    for p_victim, p_original in zip(victim.parameters(), backdoored["model"].parameters()):
        assert torch.equal(p_victim, p_original)  # the victim itself is untouched
    return after


@pytest.mark.parametrize("name", LOWERS_ASR_IN_CI)
def test_defense_lowers_asr_on_a_backdoored_model(backdoored, name):
    after, before = _run_on_test_victim(backdoored, name), backdoored["before"]
    assert after["asr"] < ASR_BOUND, f"{name}: ASR {before['asr']:.1f} -> {after['asr']:.1f} (ACC {before['acc']:.1f} -> {after['acc']:.1f})"


@pytest.mark.parametrize("name", sorted(set(DEFENSES) - set(LOWERS_ASR_IN_CI)))
def test_defense_runs_on_a_backdoored_model(backdoored, name):
    _run_on_test_victim(backdoored, name)
