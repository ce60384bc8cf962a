import json
import multiprocessing
import warnings

import pytest
import torch

from purify_lib.errors import PurifyError
from purify_lib.zoo import get_victim

# A victim small enough to train in seconds: the point here is the cache, not the backdoor.
TINY = dict(profile="smoke", width=4, train_size=300, test_size=100, progress=False)


def weight_files(folder, pattern="*"):
    """A zoo's model weights, not the parts stored beside them (``.poisons.pt``, ``.triggered.pt``, ``.attack.pt``)."""
    return (p for p in folder.glob(f"{pattern}.pt") if not p.name.endswith((".poisons.pt", ".triggered.pt", ".attack.pt")))


def tiny_recipe():
    from purify_lib.train import Recipe

    return Recipe(epochs=1, batch_size=100, lr=0.05, schedule="onecycle")


def test_second_request_is_a_cache_hit(isolated_cache):
    first = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    second = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    assert not first.cache_hit and second.cache_hit
    assert second.record == first.record
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a.cpu(), b.cpu()), name
    record = json.loads(next(isolated_cache.glob("badnets-*.json")).read_text())
    assert set(record["metrics"]) == {"acc", "asr", "ra", "clean_loss", "backdoor_loss"}
    assert len(record["poisoned_indices"]) == 30
    assert record["versions"]["torch"] == torch.__version__


def test_different_config_is_a_different_entry(isolated_cache):
    get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    other = get_victim("badnets", 0.2, recipe=tiny_recipe(), **TINY)
    assert not other.cache_hit
    assert len(list(isolated_cache.glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_checkpoint_is_reported_and_rebuilt(isolated_cache, damage):
    get_victim("blended", 0.1, recipe=tiny_recipe(), **TINY)
    weights = next(weight_files(isolated_cache, "blended-*"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-10] + bytes(10))
    with pytest.warns(UserWarning, match="unusable.*rebuilding"):
        rebuilt = get_victim("blended", 0.1, recipe=tiny_recipe(), **TINY)
    assert not rebuilt.cache_hit
    assert weights.read_bytes() != data[: len(data) // 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            assert get_victim("blended", 0.1, recipe=tiny_recipe(), **TINY).cache_hit
        except UserWarning as warning:  # only the low-ASR flag may fire on a 1-epoch model
            assert "backdoor was not learned" in str(warning)


def test_low_asr_victim_is_flagged(isolated_cache, monkeypatch):
    import purify_lib.zoo

    monkeypatch.setattr(purify_lib.zoo, "MIN_ASR", 101.0)  # no ASR reaches it: every victim is flagged
    with pytest.warns(UserWarning, match="backdoor was not learned"):
        victim = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    assert victim.backdoored is False and victim.record["backdoored"] is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(attack="nope"), "unknown attack 'nope'"),
    (dict(attack="badnets", profile="huge"), "unknown profile 'huge'; allowed: cpu, paper, smoke"),
    (dict(attack="badnets", model="resnet9000"), "unknown model 'resnet9000'"),
    (dict(attack="badnets", poison_rate=1.5), r"poison_rate=1.5 is outside \(0, 1\]"),
    (dict(attack="badnets", poison_rate=0.0), r"poison_rate=0.0 is outside \(0, 1\]"),
    (dict(attack="sig", poison_rate=0.5), "asks for 150 poisons but the target class holds"),
    (dict(attack="blended", attack_params={"trigger_path": "/no/kitty.jpeg"}), "trigger file '/no/kitty.jpeg' does not exist"),
    (dict(attack="badnets", data_root="/no/data"), "dataset root '/no/data' does not exist"),
    (dict(attack=None, adversarial_eps=-0.1), r"adversarial_eps=-0.1 is outside \[0, 1\]"),
    (dict(attack="iad", attack_params={"channels": 0}), "iad needs .*channels >= 1"),
    (dict(attack="ssba", attack_params={"max_residual": 2.0}), "ssba needs .*max_residual in \\(0, 1\\]"),
])
def test_bad_input_fails_before_training_and_writes_nothing(isolated_cache, kwargs, message):
    args = {**TINY, "poison_rate": 0.1, **kwargs}
    with pytest.raises(PurifyError, match=message):
        get_victim(**args)
    assert not isolated_cache.exists() or not any(isolated_cache.iterdir())


def _request(zoo, queue):
    import os

    os.environ["PURIFY_ZOO"] = zoo
    victim = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    queue.put(victim.cache_hit)


def test_concurrent_requests_train_once(isolated_cache):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_request, args=(str(isolated_cache), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    hits = sorted(queue.get(timeout=5) for _ in workers)
    assert hits == [False, True]
    assert len(list(weight_files(isolated_cache))) == 1


def test_poisoned_train_matches_the_record_and_lc_trains_its_clean_model_once(isolated_cache):
    victim = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    poisoned = victim.poisoned_train()
    assert poisoned.poisoned.tolist() == victim.record["poisoned_indices"]
    assert (poisoned.data.labels[poisoned.poisoned] == 0).all()

    lc = get_victim("lc", 0.05, recipe=tiny_recipe(), attack_params={"steps": 1}, **TINY)
    adversarial = list(isolated_cache.glob("clean-adv-*.json"))
    assert len(adversarial) == 1  # the adversarially trained model LC attacks, stored once
    assert json.loads(adversarial[0].read_text())["config"]["adversarial_eps"] == round(8 / 255, 6)
    again = get_victim("lc", 0.05, recipe=tiny_recipe(), attack_params={"steps": 1}, **TINY)
    assert again.cache_hit and again.attack.clean_model is None
    stored = again.poisoned_train()  # the poisons stored when it was built: no clean model fetched, no PGD run again
    assert again.attack.clean_model is None and stored.poisoned.tolist() == lc.record["poisoned_indices"]
    assert torch.equal(stored.data.images, lc.poisoned_train().data.images) and len(list(isolated_cache.glob("*.json"))) == 3
    # a victim stored before its poisons were (or with a damaged poisons file) computes them, as it did
    poisons = next(isolated_cache.glob("lc-*.poisons.pt"))
    poisons.write_bytes(poisons.read_bytes()[:-10] + bytes(10))
    with pytest.warns(UserWarning, match="stored poisons are unusable"):
        recomputed = again.poisoned_train()  # fetches the clean model from the zoo, trains nothing
    assert torch.equal(recomputed.data.images, stored.data.images) and len(list(isolated_cache.glob("*.json"))) == 3


def test_each_precision_is_its_own_victim_and_defense_entry(isolated_cache, monkeypatch):
    from purify_lib import precision
    from purify_lib.defend import defend

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # what is tested is the key, not the arithmetic
    monkeypatch.setenv("PURIFY_PRECISION", "fp32")
    fp32 = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    defend(fp32, "lp", epochs=1, evaluate=False)
    monkeypatch.setenv("PURIFY_PRECISION", "bf16")
    bf16 = get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY)
    assert not bf16.cache_hit and bf16.record["config"]["precision"] == "bf16" and fp32.record["config"]["precision"] == "fp32"
    assert len(list(isolated_cache.glob("badnets-*.json"))) == 2
    monkeypatch.setenv("PURIFY_PRECISION", "fp32")
    assert get_victim("badnets", 0.1, recipe=tiny_recipe(), **TINY).cache_hit
    assert defend(fp32, "lp", epochs=1, evaluate=False).cache_hit
    # The same victim defended in bf16 is a new defense entry, not the fp32 one served again.
    monkeypatch.setenv("PURIFY_PRECISION", "bf16")
    assert not defend(fp32, "lp", epochs=1, evaluate=False).cache_hit


def test_learned_attack_state_is_stored_beside_the_victim_and_checked(isolated_cache):
    first = get_victim("iad", 0.1, recipe=tiny_recipe(), **TINY)
    state = next(isolated_cache.glob("iad-*.attack.pt"))
    assert "attack_sha256" in first.record and first.attack.params()["channels"] == 4  # the smoke profile's IAD
    probe = first.splits.test.images[:4]
    again = get_victim("iad", 0.1, recipe=tiny_recipe(), **TINY)
    assert again.cache_hit and torch.equal(again.attack.apply(probe), first.attack.apply(probe))
    # the learned trigger's test set is stored with the victim, and is what the loaded trigger makes
    from purify_lib.metrics import triggered_test_set

    assert "triggered_sha256" in again.record and torch.equal(again.triggered_test().images, triggered_test_set(again.splits.test, again.attack).images)
    state.write_bytes(state.read_bytes()[:-10] + bytes(10))
    with pytest.warns(UserWarning, match="unusable.*rebuilding"):
        assert not get_victim("iad", 0.1, recipe=tiny_recipe(), **TINY).cache_hit


def test_ssba_encoder_is_one_zoo_asset_for_every_rate(isolated_cache):
    high = get_victim("ssba", 0.1, recipe=tiny_recipe(), **TINY)
    low = get_victim("ssba", 0.2, recipe=tiny_recipe(), **TINY)
    assets = list(isolated_cache.glob("asset-ssba-*.json"))
    assert len(assets) == 1 and not low.cache_hit
    record = json.loads(assets[0].read_text())
    assert set(record["extra"]) == {"bit_accuracy", "psnr_db", "max_pixel_change"} and record["config"]["asset"]["steps"] == 20
    probe = high.splits.test.images[:4]
    assert torch.equal(high.attack.apply(probe), low.attack.apply(probe))  # one encoder, one secret
    assert sum("asset-ssba" in line for line in (isolated_cache / "trained.log").read_text().splitlines()) == 1


def test_trojannn_trigger_comes_from_the_zoo_clean_model_and_is_stored(isolated_cache):
    victim = get_victim("trojannn", 0.1, recipe=tiny_recipe(), attack_params={"steps": 5}, **TINY)
    assert len(list(isolated_cache.glob("clean-preactresnet18-*.json"))) == 1
    again = get_victim("trojannn", 0.1, recipe=tiny_recipe(), attack_params={"steps": 5}, **TINY)
    assert again.cache_hit and again.attack.clean_model is None  # the trigger came back with the victim
    assert torch.equal(again.attack.trigger, victim.attack.trigger) and again.attack.trigger.any()


def test_a_cache_hit_is_the_model_the_miss_was(isolated_cache, monkeypatch):
    """Same logits, same memory format (channels_last, as training leaves it), same triggers, and the attack's
    trigger networks moved to the victim's device (on a GPU, a CPU-side generator makes other triggers)."""
    from purify_lib.attacks.iad import IAD
    from purify_lib.metrics import logits

    moved = []
    real_to = IAD.to
    monkeypatch.setattr(IAD, "to", lambda self, device: moved.append(str(device)) or real_to(self, device))
    miss = get_victim("iad", 0.1, recipe=tiny_recipe(), **TINY)
    hit = get_victim("iad", 0.1, recipe=tiny_recipe(), **TINY)
    assert not miss.cache_hit and hit.cache_hit and moved == ["cpu", "cpu"]
    for victim in (miss, hit):
        conv = next(m for m in victim.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert next(victim.attack.nets.parameters()).device == next(victim.model.parameters()).device
    images = miss.splits.test.images
    assert torch.equal(logits(miss.model, images), logits(hit.model, images))
    assert torch.equal(miss.attack.apply(images), hit.attack.apply(images))


def test_the_triggered_test_set_is_built_once_per_victim(isolated_cache, monkeypatch):
    from purify_lib.attacks.blended import Blended
    from purify_lib.defend import defend

    victim = get_victim("blended", 0.1, recipe=tiny_recipe(), **TINY)
    applied = []
    real_apply = Blended.apply
    monkeypatch.setattr(Blended, "apply", lambda self, images: applied.append(len(images)) or real_apply(self, images))
    defend(victim, "lp", epochs=1)
    defend(victim, "lp", epochs=1)  # a cache hit
    defend(victim, "ft", epochs=1)
    assert applied == [int((victim.splits.test.labels != 0).sum())]
    assert victim.triggered_test() is victim.triggered_test()


def test_records_name_the_gpu_cuda_cudnn_and_driver_when_there_is_one(monkeypatch):
    import subprocess

    from purify_lib import provenance

    assert "gpu" not in provenance.machine() or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, stdout="570.86\n"))
    facts = provenance.machine()
    assert {k: facts[k] for k in ("gpu", "gpu_capability", "cuda", "cudnn", "driver")} == {
        "gpu": "NVIDIA H200", "gpu_capability": "9.0", "cuda": "12.8", "cudnn": 91000, "driver": "570.86"}
