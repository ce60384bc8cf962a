"""Device discipline without a GPU.  PyTorch's ``meta`` device refuses to mix its tensors with CPU ones, as CUDA
does, so running every attack and defense with the model and data on it finds a tensor made off the data's
device.  Meta tensors hold no values: the few reads of a value (``item``, ``nonzero``, ``unique``, a copy back to
the CPU) get stand-in kernels here, and seeded generators, which meta has none of, are left to the global one."""
from __future__ import annotations

import sys

import pytest
import torch

from purify_lib import seeds
from purify_lib.attacks import ATTACKS, make_attack
from purify_lib.data import ImageSet
from purify_lib.defenses import DEFENSES
from purify_lib.models import make_model

META = torch.device("meta")


@pytest.fixture
def meta_values(monkeypatch):
    """Stand-ins for the kernels that read a meta tensor's (absent) values, at the dispatcher, so the library's
    own calls and PyTorch's internal ones (boolean-mask indexing calls ``nonzero``) both reach them."""
    monkeypatch.setenv("PURIFY_PRECISION", "fp32")  # autocast has no meta device type
    library = torch.library.Library("aten", "IMPL")
    library.impl("_local_scalar_dense", lambda t: False if t.dtype == torch.bool else (0.5 if t.dtype.is_floating_point else 0), "Meta")
    library.impl("nonzero", lambda t: torch.zeros((t.numel(), t.dim()), dtype=torch.long, device=META), "Meta")
    library.impl("_unique2", lambda t, sorted=True, return_inverse=False, return_counts=False: (
        torch.arange(10, device=META), torch.zeros(t.shape, dtype=torch.long, device=META), torch.ones(10, dtype=torch.long, device=META)), "Meta")
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: torch.zeros(t.shape, dtype=t.dtype) if t.device == META else real_cpu(t, *a, **k))
    real_stream = seeds.stream
    meta_aware = lambda purpose, *numbers, device="cpu": None if torch.device(device) == META else real_stream(purpose, *numbers, device=device)
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("purify_lib") and getattr(module, "stream", None) is real_stream:
            monkeypatch.setattr(module, "stream", meta_aware)
    yield
    library._destroy()


def _meta_data(count: int = 40) -> ImageSet:
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageSet(images.to(META), (torch.arange(count) % 10).to(META))


def _meta_model():
    return make_model("preactresnet18", 10, width=2).to(META)


def test_the_meta_stand_ins_catch_a_tensor_made_off_the_data_device(meta_values):
    """The guard can fail: a CPU tensor meeting the meta data raises, as it would meet CUDA data."""
    data = _meta_data()
    with pytest.raises(RuntimeError, match="device"):
        data.images.float() + torch.zeros(data.images.shape[1:])


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_keeps_its_tensors_on_the_data_device(meta_values, name):
    result = DEFENSES[name](_meta_model(), _meta_data(), None, **DEFENSES[name].budget("smoke"))
    assert next(result.model.parameters()).device == META


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_makes_its_triggers_on_the_data_device(meta_values, name):
    data = _meta_data()
    settings = {**ATTACKS[name].budget("smoke"), **({"steps": 2} if name in ("ssba", "trojannn", "lc") else {})}
    attack = make_attack(name, **settings)
    if hasattr(attack, "clean_model"):  # LC and TrojanNN craft their triggers on a clean model
        attack.clean_model = _meta_model()
    if attack.asset_config() is not None:
        attack.build_asset(data, META)
    attack.prepare(data, META)
    assert attack.poison_images(data.images).device == META
    assert attack.apply(data.images).device == META
    if attack.training_controlled:
        images, labels = attack.poison_batch(data.images.float() / 255, data.labels, 0.5)
        assert images.device == labels.device == META
        loss = attack.extra_loss()
        assert loss is None or loss.device == META


def _count_host_traffic(monkeypatch) -> list[str]:
    """Record the library's own calls that wait for the device (``item``, ``bool``...) or move a tensor to a
    device (``.to(device)``); PyTorch's internal ones (Adam reads its step count on the host) are not the library's."""
    calls = []

    def recording(name, real):
        def call(self, *args, **kwargs):
            moves = name != "to" or "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args)
            if moves and "purify_lib" in sys._getframe(1).f_code.co_filename:
                calls.append(f"{name} at {sys._getframe(1).f_code.co_name}:{sys._getframe(1).f_lineno}")
            return real(self, *args, **kwargs)
        return call

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "to"):
        monkeypatch.setattr(torch.Tensor, name, recording(name, getattr(torch.Tensor, name)))
    return calls


@pytest.mark.parametrize("name, longer", [("ssba", {"steps": 4}), ("iad", {"mask_epochs": 2})])
def test_learned_triggers_train_without_a_host_copy_or_wait_per_step(monkeypatch, name, longer):
    """SSBA's encoder and IAD's mask generator used to copy every batch from the host, and SSBA read its bit
    accuracy every step: the calls must not grow with the number of steps."""
    data = ImageSet(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 10)
    shorter = {"steps": 2} if name == "ssba" else {"mask_epochs": 1}
    counts = []
    for settings in (shorter, longer):
        attack = make_attack(name, channels=2, batch_size=8, **settings)
        calls = _count_host_traffic(monkeypatch)
        attack.build_asset(data, "cpu") if name == "ssba" else attack.prepare(data, "cpu")
        counts.append(list(calls))
        monkeypatch.undo()
    assert counts[0] == counts[1]
