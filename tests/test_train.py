import math

import pytest
import torch

from purify_lib.attacks import make_attack
from purify_lib.data import to_float
from purify_lib.metrics import Evaluator, evaluate
from purify_lib.models import get_head, make_model
from purify_lib.train import Recipe, train_model


class Constant(torch.nn.Module):
    """Predicts one class whatever the input."""

    def __init__(self, label):
        super().__init__()
        self.label = label
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), self.label), 10).float() + 0 * self.dummy


def test_metrics_on_constant_predictors(images):
    attack = make_attack("badnets")
    always_target = evaluate(Constant(0), images, attack)
    assert {k: always_target[k] for k in ("acc", "asr", "ra")} == pytest.approx({"acc": 10.0, "asr": 100.0, "ra": 0.0})
    # One-hot logits: cross-entropy is log(9 + e) when wrong and one less when right. Triggered images are
    # scored against their true (non-target) labels, so all are wrong; one clean image in ten is right.
    wrong = math.log(9 + math.e)
    assert always_target["backdoor_loss"] == pytest.approx(wrong, abs=1e-5)
    assert always_target["clean_loss"] == pytest.approx(wrong - 0.1, abs=1e-5)
    always_three = Evaluator(images, attack)(Constant(3))
    assert always_three["asr"] == 0.0 and always_three["acc"] == pytest.approx(10.0)
    assert abs(always_three["ra"] - 100 / 9) < 1e-4  # class 3 is one of the nine non-target classes


def test_evaluations_along_the_way_use_a_random_share_of_the_test_images_and_the_final_one_all(images):
    from purify_lib.data import ImageSet
    from purify_lib.defenses.base import tune

    attack = make_attack("badnets")
    size = 37
    evaluator = Evaluator(images, attack, progress_size=size)
    always_three = Constant(3)
    assert evaluator(always_three) == Evaluator(images, attack)(always_three)  # final: every image
    quick = evaluator(always_three, final=False)
    share, triggered = evaluator.quick
    assert len(share) == size and len(triggered) == size
    assert quick["acc"] == pytest.approx(100 * (share.labels == 3).float().mean().item())
    assert quick["ra"] == pytest.approx(100 * (triggered.labels == 3).float().mean().item())
    # a test set stored class by class (as the ImageFolder sources are): the share still spans the classes
    by_class = ImageSet(images.images, images.labels.sort().values)
    assert Evaluator(by_class, progress_size=40).quick[0].labels.unique().numel() == 10
    # tune marks only its last evaluation final
    calls = []
    model = make_model("preactresnet18", 10, width=4)
    tune(model, images.subset(torch.arange(40)), model.parameters(), epochs=4, lr=0.01, batch_size=20, eval_every=2,
         evaluator=lambda net, final: calls.append(final) or {"acc": 0.0})
    assert calls == [False, False, True]


def test_training_is_seeded_and_learns(images):
    def run():
        torch.manual_seed(0)
        model = make_model("preactresnet18", 10, width=4)
        train_model(model, images, Recipe(epochs=2, batch_size=50, lr=0.05, seed=3), progress=False)
        return model

    first, second = run(), run()
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    torch.manual_seed(0)
    untrained = make_model("preactresnet18", 10, width=4)
    assert not torch.equal(untrained.conv1.weight, first.conv1.weight)


def test_training_controlled_attack_poisons_batches(images):
    attack = make_attack("wanet")
    calls = []
    original = attack.poison_batch

    def spy(x, y, rate):
        calls.append(rate)
        return original(x, y, rate)

    attack.poison_batch = spy
    model = make_model("preactresnet18", 10, width=4)
    train_model(model, images, Recipe(epochs=1, batch_size=50), attack=attack, poison_rate=0.1, progress=False)
    assert calls == [0.1] * 4


@pytest.mark.parametrize("post_augment", [True, False])
def test_wanet_warps_the_unaugmented_image_as_backdoorbench_does(images, post_augment):
    """With ``post_augment`` every image reaching ``poison_batch`` is a dataset image as it is;
    without, the recipe's crop and flip come first, so some are not."""
    attack = make_attack("wanet", post_augment=post_augment)
    dataset = {tuple(image.flatten().tolist()) for image in to_float(images.images)}
    seen, augmented = [], []
    original_poison, original_augment = attack.poison_batch, attack.augment

    def spy_poison(x, y, rate):
        seen.extend(tuple(image.flatten().tolist()) in dataset for image in x)
        return original_poison(x, y, rate)

    def spy_augment(x):
        augmented.append(len(x))
        return original_augment(x)

    attack.poison_batch, attack.augment = spy_poison, spy_augment
    train_model(make_model("preactresnet18", 10, width=4), images, Recipe(epochs=1, batch_size=50), attack=attack,
                poison_rate=0.1, progress=False)
    assert len(seen) == len(images)
    assert all(seen) if post_augment else not all(seen)
    assert augmented == ([50] * 4 if post_augment else [])


def test_models_split_into_features_and_head():
    for name in ("preactresnet18", "resnet18", "vgg19bn"):
        model = make_model(name, 10, width=16).eval()
        x = torch.rand(2, 3, 32, 32)
        _, head = get_head(model)
        assert torch.allclose(model(x), head(model.features(x)))
        assert model.features(x).shape == (2, head.in_features)


def test_preact_resnet18_has_backdoorbench_shape():
    """As BackdoorBench's models/preact_resnet.py: 16 BatchNorm layers, layer4 pooled with no BatchNorm or ReLU after it."""
    model = make_model("preactresnet18", 10, width=8).eval()
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 16
    x = torch.rand(2, 3, 32, 32)
    stages = model.layer4(model.layer3(model.layer2(model.layer1(model.conv1(model.normalize(x))))))
    assert torch.allclose(model.features(x), stages.mean((2, 3)), atol=1e-6)
    assert (model.features(x) < 0).any()  # no ReLU before pooling


def test_resnet18_is_the_cifar_variant_fst_and_nft_train():
    """3x3 stem, no max-pool, BatchNorm on projection shortcuts: 20 BatchNorm layers (17 + 3 shortcuts),
    11.2M parameters at width 64, and a 32x32 input keeps its resolution through layer1."""
    model = make_model("resnet18", 10, width=64).eval()
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.layer1(model.stem(torch.rand(1, 3, 32, 32))).shape == (1, 64, 32, 32)
    assert (model.features(torch.rand(2, 3, 32, 32)) >= 0).all()  # a ReLU ends every block


def test_training_and_tuning_read_the_loss_once_an_epoch_not_every_step(monkeypatch):
    """On a GPU every ``.item()`` (and ``bool``, ``int``, ``float``, ``tolist`` of a tensor) waits for the device;
    a 16-step epoch of ``train_model`` makes none without its progress bar, ``tune`` one (the epoch's loss)."""
    from purify_lib.data import ImageSet
    from purify_lib.defenses.base import tune

    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k))
    generator = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (16 * 8, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(128) % 10)
    model = make_model("preactresnet18", 10, width=2)
    poisoned = make_attack("badnets").poison(data, 0.1).data
    calls.clear()
    train_model(model, poisoned, Recipe(epochs=1, batch_size=8), progress=False, precision="fp32")
    assert calls == []
    tune(model, data, model.parameters(), epochs=1, lr=0.01, batch_size=8, precision="fp32")
    assert calls == ["item"]


@pytest.mark.parametrize("name", ["preactresnet18", "resnet18", "vgg19bn"])
def test_models_pool_with_a_mean_that_deterministic_mode_allows(name):
    """adaptive_avg_pool2d's CUDA backward has no deterministic kernel, so torch.use_deterministic_algorithms(True)
    stopped every training there; a mean over the positions is the same average."""
    model = make_model(name, 10, width=8)
    x = torch.rand(2, 3, 32, 32)
    graph, stack = set(), [model.features(x).grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in graph:
            graph.add(type(node).__name__)
            stack += [next_node for next_node, _ in node.next_functions]
    assert not any("AdaptiveAvgPool" in name for name in graph), graph


def test_cuda_runs_turn_on_cudnn_autotuning_and_tf32(monkeypatch):
    from purify_lib.metrics import pick_device

    for flag in ("benchmark", "allow_tf32"):
        monkeypatch.setattr(torch.backends.cudnn, flag, False)
    matmul = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert pick_device("cpu").type == "cpu" and not torch.backends.cudnn.benchmark
        assert torch.get_float32_matmul_precision() == "highest"
        assert pick_device("cuda:0").type == "cuda"  # choosing the device touches no GPU
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(matmul)


def test_tuning_runs_channels_last_as_training_does():
    from purify_lib.data import ImageSet
    from purify_lib.defenses.base import tune

    model = make_model("preactresnet18", 10, width=2)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    data = ImageSet(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(16) % 10)
    tune(model, data, model.parameters(), epochs=1, lr=0.01, batch_size=8, precision="fp32")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert seen == [True, True] and conv.weight.is_contiguous(memory_format=torch.channels_last)


def _count_syncs(monkeypatch):
    """Record the tensor calls that wait for the device: item, tolist, bool, int, float, and boolean-mask indexing."""
    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k))
    real_getitem = torch.Tensor.__getitem__

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            calls.append("boolean mask")
        return real_getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
    return calls


def test_sau_and_wanet_steps_do_not_wait_for_the_device(monkeypatch):
    from purify_lib.defenses.sau import shared_perturbation

    model, reference = make_model("preactresnet18", 10, width=2).eval(), make_model("preactresnet18", 10, width=2).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8)
    wanet = make_attack("wanet")
    calls = _count_syncs(monkeypatch)
    shared_perturbation(model, reference, x, y, 0.2, 5, 0.2, 0.01, 1.0)
    assert calls == []
    wanet.augment(wanet.poison_batch(x, y, 0.5)[0])
    assert calls == ["__int__"]  # the one conversion is of a CPU-side draw (whether to poison one more), never a GPU tensor
