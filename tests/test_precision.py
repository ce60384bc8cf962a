"""The precision setting: resolution, the one-line errors, fp32 master weights, and the cache keys."""
import pytest
import torch

from purify_lib import precision as precision_module
from purify_lib.errors import PurifyError
from purify_lib.models import make_model
from purify_lib.precision import autocast, resolve_precision
from purify_lib.train import Recipe, train_model
from purify_lib.zoo import get_victim, victim_config

HAS_BF16 = precision_module.cpu_has_bf16()


@pytest.fixture
def no_bf16(monkeypatch):
    """Pretend this CPU has no bf16 instructions."""
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)


def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.delenv("PURIFY_PRECISION", raising=False)
    assert resolve_precision("cpu") == ("bf16" if HAS_BF16 else "fp32")
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert resolve_precision("cpu") == "fp32"
    assert resolve_precision("cpu", "fp32") == "fp32"
    monkeypatch.setenv("PURIFY_PRECISION", "fp32")
    assert resolve_precision("cpu") == "fp32"


def test_bad_precision_settings_are_one_line_errors(monkeypatch, no_bf16):
    with pytest.raises(PurifyError, match=r"^precision='bf16', but this CPU has neither AVX-512 BF16 nor AMX; use fp32 or auto$"):
        resolve_precision("cpu", "bf16")
    with pytest.raises(PurifyError, match=r"^precision='fp16' is for GPUs"):
        resolve_precision("cpu", "fp16")
    monkeypatch.setenv("PURIFY_PRECISION", "half")
    with pytest.raises(PurifyError, match=r"^PURIFY_PRECISION='half' is not a precision; allowed: auto, bf16, fp16, fp32$"):
        resolve_precision("cpu")


def test_forced_bf16_without_it_fails_before_training(isolated_cache, no_bf16):
    with pytest.raises(PurifyError, match="precision='bf16', but this CPU"):
        get_victim("badnets", 0.1, "smoke", width=4, train_size=300, test_size=100, progress=False, precision="bf16")
    assert not list(isolated_cache.glob("*.pt")) and not list(isolated_cache.glob("*.json"))
    model = make_model("preactresnet18", 10, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PurifyError, match="precision='bf16'"):
        train_model(model, None, Recipe(epochs=1), precision="bf16")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_precision_is_part_of_the_victim_key():
    from purify_lib.profiles import get_profile
    from purify_lib.zoo import config_key

    profile = get_profile("smoke")
    keys = {config_key(victim_config(profile, None, 0.0, "cifar10-x", 0, name)) for name in ("bf16", "fp32")}
    assert len(keys) == 2


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 instructions")
def test_bf16_training_keeps_fp32_weights_and_close_logits(images):
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, width=8)
    train_model(model, images, Recipe(epochs=1, batch_size=50, lr=0.05), progress=False, precision="bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = images.images[:32].float() / 255
    with torch.no_grad():
        full = model(x)
        with autocast("cpu", "bf16"):
            low = model(x)
    assert low.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: here the largest logit difference was about 1% of the logits' spread
    # (a different model's logits differ by about one spread); 5% leaves a wide margin for other kernels.
    assert (low.float() - full).abs().max() < 0.05 * full.std()


@pytest.mark.parametrize("capability, name, chosen", [((7, 0), "Tesla V100", "fp16"), ((7, 5), "Tesla T4", "fp16"),
                                                      ((8, 0), "A100", "bf16"), ((9, 0), "H200", "bf16")])
def test_a_gpu_gets_bf16_only_with_native_bf16_units(monkeypatch, capability, name, chosen):
    """torch.cuda.is_bf16_supported() also counts emulation (a V100 or T4 says yes); the compute capability decides."""
    monkeypatch.delenv("PURIFY_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert resolve_precision("cuda:0") == chosen
    if chosen == "fp16":
        with pytest.raises(PurifyError, match=rf"but GPU {name} \(compute capability {capability[0]}.{capability[1]}\) has no native bf16"):
            resolve_precision("cuda:0", "bf16")
