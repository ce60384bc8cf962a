"""``defend``: a defense on a zoo victim with its paper's data and the profile's budget, and the cache of its results
(keyed by the victim, the defense, every setting, the data and a digest of the code; loaded hash-checked)."""
import json
import warnings

import pytest
import torch

from purify_lib.defend import defend
from purify_lib.defenses import parameters_of
from purify_lib.errors import PurifyError
from purify_lib.train import Recipe
from purify_lib.zoo import get_victim

# A victim small enough to train in seconds: the point here is the cache, not the backdoor.
TINY = dict(profile="smoke", width=4, train_size=300, test_size=100, progress=False)


def tiny_recipe():
    return Recipe(epochs=1, batch_size=100, lr=0.05, schedule="onecycle")


@pytest.fixture
def victim(isolated_cache):
    return get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)


def same_weights(a, b):
    return all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name, params", [("ft", dict(epochs=1)), ("mmbd", dict(epochs=1))])  # mmbd: a model with clipping layers
def test_second_defense_call_is_a_cache_hit(victim, isolated_cache, name, params):
    first = defend(victim, name, **params)
    second = defend(victim, name, **params)
    assert not first.cache_hit and second.cache_hit
    assert same_weights(first.model, second.model)
    assert second.history == json.loads(json.dumps(first.history)) and second.params == first.params
    x = victim.splits.test.images[:20].float() / 255
    assert torch.equal(first.model(x).argmax(1), second.model(x).argmax(1))
    other = defend(victim, name, lr=0.05, **params) if name == "ft" else defend(victim, name, c=0.3, **params)
    assert not other.cache_hit  # any changed setting is a different entry
    default = {"ft": "lr", "mmbd": "c"}[name]
    assert defend(victim, name, **{default: parameters_of(name)[default]}, **params).cache_hit  # a default given is the same run


def test_tampered_cached_defense_is_run_again(victim, isolated_cache):
    first = defend(victim, "lp", epochs=1)
    checkpoint = next((isolated_cache / "defended").glob("*--lp-*.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = defend(victim, "lp", epochs=1)
    assert not again.cache_hit and any("unusable" in str(w.message) for w in caught)
    assert same_weights(first.model, again.model)  # seeded: the rerun reproduces the result


def test_cache_off_runs_every_time(victim, isolated_cache):
    assert not defend(victim, "lp", epochs=1, cache=False).cache_hit
    assert not (isolated_cache / "defended").exists()


def test_without_poisons_takes_the_known_poisons_out_for_the_pad_family_only(victim, isolated_cache, monkeypatch):
    import purify_lib.defend as defend_module
    from purify_lib.errors import PurifyError

    seen = []
    monkeypatch.setattr(defend_module, "purify", lambda name, model, data, evaluator, **settings: seen.append((data, settings)))
    poisoned = victim.poisoned_train()
    assert len(poisoned.poisoned) > 0
    defend(victim, "pad", cache=False)
    defend(victim, "pad", cache=False, without_poisons=True)
    (full, full_settings), (oracle, oracle_settings) = seen
    assert len(full) == len(poisoned.data) and torch.equal(full_settings["poisoned"], poisoned.poisoned)
    assert len(oracle) == len(poisoned.data) - len(poisoned.poisoned) and len(oracle_settings["poisoned"]) == 0
    clean = torch.ones(len(poisoned.data), dtype=torch.bool)
    clean[poisoned.poisoned] = False
    assert torch.equal(oracle.images, poisoned.data.images[clean]) and torch.equal(oracle.labels, poisoned.data.labels[clean])
    with pytest.raises(PurifyError, match="without_poisons is for the defenses that use the poisoned training set"):
        defend(victim, "ft", epochs=1, without_poisons=True)


def test_defend_uses_the_papers_defense_data(isolated_cache):
    from purify_lib.defend import defend

    victim = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    # the papers' protocol: the victim trains on every image it was given, and a defense's clean data is a
    # class-balanced share of their clean originals (poisoned ones included, with their true labels)
    assert victim.record["config"]["reserve_fraction"] == 0 and len(victim.splits.reserve) == 0
    drawn = victim.splits.defense_data(0.2)
    assert len(drawn) == 60 and (drawn.labels.bincount() == 6).all()
    assert set(drawn.indices.tolist()) <= set(victim.splits.train.indices.tolist())
    originals = victim.splits.train.images[torch.searchsorted(victim.splits.train.indices, drawn.indices)]
    assert torch.equal(drawn.images, originals)  # clean originals, not the poisoned training images
    fst = defend(victim, "fst", epochs=1)
    assert fst.params["epochs"] == 1 and len(fst.history) == 2
    one_shot = defend(victim, "nft", per_class=1, steps=2, evaluate=False)
    assert all("asr" not in row for row in one_shot.history) and one_shot.params["steps"] == 2
    pad = defend(victim, "pad", n_c=5, clip_epochs=1, evaluate=False)
    assert pad.extra["kept"] == 50 and 0 <= pad.extra["kept_poisoned"] <= 50
    with pytest.raises(PurifyError, match="defense data fraction 2 means 600 images; the train set holds 300"):
        defend(victim, "ft", data_fraction=2)
    # the held-out protocol: a reserve the victim never sees, fractions of the full training set
    held_out = get_victim("badnets", 0.1, recipe=tiny_recipe(), defense_data="reserve", reserve_fraction=0.05, **TINY)
    assert held_out.record["key"] != victim.record["key"] and len(held_out.splits.reserve) == 2500
    assert set(held_out.splits.defense_data(0.02).indices.tolist()) <= set(held_out.splits.reserve.indices.tolist())
    with pytest.raises(PurifyError, match="defense data fraction 0.5 means 25000 images; the reserve set holds 2500"):
        defend(held_out, "ft", data_fraction=0.5)
    with pytest.raises(PurifyError, match="unknown defense_data 'test'"):
        get_victim("badnets", 0.1, defense_data="test", **TINY)


def test_defense_cache_digest_covers_each_defense_s_own_code():
    from purify_lib.defend import code_digest, code_files

    names = lambda defense: {path.name for path in code_files(defense)}
    assert {"defend.py", "train.py", "models.py", "base.py", "finetune.py"} <= names("fst")
    assert "nft.py" not in names("fst") and "fp.py" not in names("fst")  # adding FP left FST's entries valid
    assert {"rnp.py", "nft.py", "base.py"} <= names("rnp")  # RNP borrows NFT's channel mask, so NFT's edits redo RNP
    assert code_digest("ft") == code_digest("fst") and code_digest("ft") != code_digest("nft")


def test_whether_a_call_evaluates_is_not_part_of_the_defense_cache_key(isolated_cache):
    """run_defenses.py (no curves) and the notebooks (curves) share entries: a curve-less entry serves calls that
    want none and is recomputed once for one that does; that one then serves both."""
    from purify_lib.defend import defend

    victim = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    bare = defend(victim, "lp", epochs=1, evaluate=False)
    assert not bare.cache_hit and defend(victim, "lp", epochs=1, evaluate=False).cache_hit
    curves = defend(victim, "lp", epochs=1)
    assert not curves.cache_hit and curves.cache_entry == bare.cache_entry and "acc" in curves.history[-1]
    assert defend(victim, "lp", epochs=1).cache_hit and defend(victim, "lp", epochs=1, evaluate=False).cache_hit
    assert len(list((isolated_cache / "defended").glob("*.json"))) == 1
