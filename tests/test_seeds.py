"""Every random draw has its own stream: no two purposes coincide, whatever the pool size or seeds."""
import torch

import purify_lib.train as train_module
from purify_lib.attacks import make_attack
from purify_lib.data import ImageSet
from purify_lib.models import make_model
from purify_lib.seeds import seed_of, stream
from purify_lib.train import Recipe, train_model


def synthetic(count: int) -> ImageSet:
    generator = torch.Generator().manual_seed(1)
    return ImageSet(torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(count) % 10)


def first_batch_of_training(monkeypatch, data, attack=None, rate=0.0, batch_size=128):
    """The index batch (and, for a training-controlled attack, the poisons in it) of the first step that
    ``train_model`` takes; training stops there."""
    seen = {}

    class Stop(Exception):
        pass

    real_batches = train_module.batches

    def spying_batches(*args, **kwargs):
        for index in real_batches(*args, **kwargs):
            seen.setdefault("index", index.clone())
            yield index
            raise Stop

    monkeypatch.setattr(train_module, "batches", spying_batches)
    if attack is not None and attack.training_controlled:
        real_poison_batch = attack.poison_batch

        def counting_poison_batch(x, y, r):
            out = real_poison_batch(x, y, r)
            seen.setdefault("poisons", int((out[0] != x).flatten(1).any(1).sum()))
            return out

        monkeypatch.setattr(attack, "poison_batch", counting_poison_batch)
    model = make_model("preactresnet18", 10, width=2)
    try:
        train_model(model, data, Recipe(epochs=1, batch_size=batch_size, augment=False), attack, rate, progress=False, precision="fp32")
    except Stop:
        pass
    return seen


def test_a_purpose_and_its_numbers_name_one_stream():
    assert seed_of("poison", 0) != seed_of("order", 0, 0)
    assert seed_of("order", 0, 0) != seed_of("order", 0, 1)
    assert seed_of("poison", 0) == seed_of("poison", 0)
    a = torch.randperm(1000, generator=stream("poison", 0))
    assert torch.equal(a, torch.randperm(1000, generator=stream("poison", 0)))
    assert not torch.equal(a, torch.randperm(1000, generator=stream("order", 0, 0)))


def test_the_first_batch_of_a_dirty_label_victim_holds_about_its_share_of_poisons(monkeypatch):
    """The coupling that this guards against: with the pool of every image and both seeds 0, the poison
    choice and epoch 1's order were one permutation, so the first 10% of the first epoch were all poisons."""
    data = synthetic(2000)
    attack = make_attack("badnets")
    rate = 0.1
    poisoned = attack.poison(data, rate, seed=0)  # what the zoo trains on, with the victim's split seed
    index = first_batch_of_training(monkeypatch, poisoned.data)["index"]
    share = torch.isin(index, poisoned.poisoned).float().mean().item()
    assert share < 3 * rate, f"{share:.0%} of the first batch are poisons at rate {rate}"
    # the old draw (one generator seeded 0 for both) put every poison first: the test would have failed
    old_choice = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:200]
    old_first = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:128]
    assert torch.isin(old_first, old_choice).all()


def test_the_first_batch_of_a_training_controlled_victim_holds_about_its_share_of_poisons(monkeypatch):
    data = synthetic(512)
    rate = 0.1
    seen = first_batch_of_training(monkeypatch, data, make_attack("wanet", cross_ratio=0.0), rate)
    assert len(seen["index"]) == 128
    assert 0 < seen["poisons"] < 3 * rate * 128
