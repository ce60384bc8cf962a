"""The methods as their authors' code runs them: NC's reverse-engineering, RNP's pruning rules, NFT's
triggers and batches, FP's ranking, MM-BD's data, the oracles, and published cells beside the run that
matches their configuration."""
import pytest
import torch

from purify_lib.attacks import make_attack
from purify_lib.data import ImageSet
from purify_lib.defenses import purify
from purify_lib.defenses.base import batch_norms, tune
from purify_lib.defenses.fp import channel_activity
from purify_lib.defenses.nc import reverse_trigger
from purify_lib.defenses.rnp import prune_by_masks
from purify_lib.errors import PurifyError
from purify_lib.models import make_model
from purify_lib.zoo import get_victim

TINY = dict(profile="smoke", width=4, train_size=300, test_size=100, progress=False)


class Recording(torch.nn.Module):
    """Predicts class 1 whatever the input, and keeps what it was given."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.inputs, self.autocast = [], []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return torch.nn.functional.one_hot(torch.ones(len(x), dtype=torch.long), 10).float() * 5 + 0 * self.dummy


def test_nc_keeps_the_first_pass_mask_for_a_class_it_never_reaches(monkeypatch):
    """BackdoorBench's fallback is the mask after the first pass; ours was reset every pass (the last one's start)."""
    monkeypatch.setenv("PURIFY_PRECISION", "bf16")  # reverse-engineering runs in fp32 whatever the profile's precision
    images = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    settings = dict(lr=0.1, batch_size=32, init_cost=1e-3, success=98.0, patience=5, seed=0)
    model = Recording()
    one_pass = reverse_trigger(model, images, 0, epochs=1, **settings)
    three_passes = reverse_trigger(Recording(), images, 0, epochs=3, **settings)
    assert torch.equal(one_pass[0], three_passes[0]) and torch.equal(one_pass[1], three_passes[1])
    assert one_pass[2] == pytest.approx(three_passes[2])
    # every image under the training augmentation: identical images become different crops and flips
    first_batch = model.inputs[0]
    assert len(first_batch) == 32 and not all(torch.equal(first_batch[0], other) for other in first_batch[1:])
    assert not any(model.autocast) and all(x.dtype == torch.float32 for x in model.inputs)


def test_rnp_prunes_by_threshold_or_by_the_lowest_number_over_all_layers():
    model = make_model("preactresnet18", 10, width=2)
    norms = batch_norms(model)
    masks = [torch.ones(n.num_features) for n in norms]
    masks[0][1], masks[3][0], masks[5][1], masks[7][0] = 0.05, 0.3, 0.6, 0.1
    by_threshold, count = prune_by_masks(model, masks, threshold=0.2)
    assert count == 2
    assert by_threshold.state_dict()[_weight_name(model, 0)][1] == 0 and by_threshold.state_dict()[_weight_name(model, 7)][0] == 0
    by_number, count = prune_by_masks(model, masks, number=3)
    pruned = {(i, c) for i, n in enumerate(batch_norms(by_number)) for c in torch.nonzero(n.weight == 0).flatten().tolist()}
    assert count == 3 and pruned == {(0, 1), (7, 0), (3, 0)}
    with pytest.raises(PurifyError, match="number=999 must be between 0 and the"):
        prune_by_masks(model, masks, number=999)
    with pytest.raises(PurifyError, match="unknown pruning_by 'count'"):
        purify("rnp", model, ImageSet(torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 10), pruning_by="count")


def _weight_name(model, index):
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)]
    return f"{names[index]}.weight"


def test_nft_triggers_are_nfts_own():
    images = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    nft_badnets = make_attack("badnets", variant="nft", pool="non_target")
    stamped = nft_badnets.apply(images)
    corner = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]]).float()
    expected = (0.4 * 100 + 0.6 * corner).round().to(torch.uint8)
    assert all(torch.equal(stamped[0, c, -3:, -3:], expected) for c in range(3))
    changed = (stamped != images).any(1)
    assert changed[:, :-3, :].sum() == 0 and changed[:, :, :-3].sum() == 0
    blended = make_attack("blended", variant="nft")
    assert blended.params()["trigger"] != make_attack("blended").params()["trigger"]
    assert nft_badnets.params() != make_attack("badnets", pool="non_target").params()  # a different victim key
    with pytest.raises(PurifyError, match="unknown badnets variant 'nfts'"):
        make_attack("badnets", variant="nfts")


def test_nft_draws_full_batches_with_replacement():
    seen = []
    model = make_model("preactresnet18", 10, width=2)
    data = ImageSet(torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8), torch.arange(50) % 10)

    def loss_fn(net, x, y):
        seen.append(len(x))
        return torch.nn.functional.cross_entropy(net(x), y)

    tune(model, data, model.parameters(), epochs=0, steps=4, lr=0.01, batch_size=32, loss_fn=loss_fn, replacement=True)
    assert seen == [32, 32, 32, 32]
    seen.clear()
    tune(model, data, model.parameters(), epochs=0, steps=4, lr=0.01, batch_size=32, loss_fn=loss_fn)
    assert seen == [32, 18, 32, 18]  # shuffled epochs: the last batch of each is short


def test_fp_ranks_post_relu_activations_when_asked():
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, width=2).eval()
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    pooled = channel_activity(model, images, "pooled", "cpu")
    relu = channel_activity(model, images, "relu", "cpu")
    with torch.no_grad():
        x = images.float() / 255
        out = model.layer4(model.layer3(model.layer2(model.layer1(model.conv1(model.normalize(x))))))
    assert torch.allclose(pooled, out.mean((2, 3)).mean(0), atol=1e-5)
    assert torch.allclose(relu, torch.relu(out).mean((0, 2, 3)), atol=1e-5)
    assert (relu >= 0).all() and (pooled < 0).any()  # the signed pooled sum is what "least active" ranks by default


def test_mmbd_takes_the_first_50_test_images_of_each_class_and_the_oracle_stamps_the_trigger(isolated_cache, monkeypatch):
    import purify_lib.defend as defend_module
    from purify_lib.defend import defend

    victim = get_victim("badnets", 0.1, **TINY)
    seen = {}

    def capturing_purify(name, model, data, evaluator=None, **params):
        seen[name] = data
        return defend_module.Defended(model, name, params)

    monkeypatch.setattr(defend_module, "purify", capturing_purify)
    defend(victim, "mmbd", per_class=3, cache=False)
    test = victim.splits.test
    expected = torch.cat([torch.nonzero(test.labels == c).flatten()[:3] for c in range(10)]).sort().values
    assert torch.equal(seen["mmbd"].images, test.images[expected])
    with pytest.raises(PurifyError, match="pass per_class, not data_fraction=0.01"):
        defend(victim, "mmbd", data_fraction=0.01)
    defend(victim, "nft", triggered_oracle=True, cache=False)
    clean = victim.splits.defense_data(0.01)
    assert torch.equal(seen["nft"].images, victim.attack.apply(clean.images)) and torch.equal(seen["nft"].labels, clean.labels)
    with pytest.raises(PurifyError, match="triggered_oracle needs a clean-data defense"):
        defend(victim, "pad", triggered_oracle=True)


def test_published_cells_sit_beside_the_run_of_their_configuration():
    from purify_lib import paper_tables
    from purify_lib.profiles import get_profile

    assert paper_tables.compared_run("D3", "ft") == paper_tables.BACKDOORBENCH_FT_ROW
    assert paper_tables.compared_run("FST", "ft") == "ft"
    cpu = get_profile("cpu")
    assert "100 epochs" in paper_tables.configuration_note("D3", "ft", cpu, {"epochs": 20})
    assert "ours cut at profile cpu: epochs 20" in paper_tables.configuration_note("D3", "ft", cpu, {"epochs": 20})
    assert paper_tables.configuration_note("D3", "nad", cpu) == "same configuration"
    assert "reverse_epochs" in paper_tables.configuration_note("D3", "nc", cpu)
    assert "not available" in paper_tables.configuration_note("NFT", "rnp", cpu)
    assert "250 epochs" in paper_tables.configuration_note("NFT", "nft", cpu)


def test_not_learned_victims_are_marked_in_tables_and_labels(tmp_path):
    import pandas as pd

    from purify_lib.plots import save_table, victim_label

    save_table(pd.DataFrame({"attack": ["badnets", "blended"], "backdoored": [True, False]}), "t", tmp_path)
    text = (tmp_path / "t.md").read_text()
    assert "| badnets | yes |" in text and "| blended | not learned |" in text
    assert pd.read_csv(tmp_path / "t.csv")["backdoored"].tolist() == [True, False]

    class Stub:
        attack, poison_rate, backdoored = make_attack("badnets"), 0.01, False

    assert victim_label(Stub()) == "badnets 0.01 (not learned)"
