"""BackdoorBench's attack_result.pt in and out, tested against a file built the way BackdoorBench's
``save_attack_result`` builds one: its PreActResNet18's key names and forward (written here from its
``models/preact_resnet.py``), normalisation in the transform, numpy states, and the poisoned images as PNGs."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from purify_lib.errors import PurifyError
from purify_lib.interop.backdoorbench import NORMALIZATION, export_victim, import_victim

ROOT = Path(__file__).resolve().parents[1]
TRAIN, TEST, TARGET = 300, 40, 0


class BBBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class BBPreActResNet18(nn.Module):
    """BackdoorBench's network: no normalisation inside, adaptive average pooling, ``linear``."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        planes, layers = 64, []
        for stage, stride in enumerate((1, 2, 2, 2)):
            out = 64 * 2**stage
            layers.append(nn.Sequential(BBBlock(planes, out, stride), BBBlock(out, out, 1)))
            planes = out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool, self.linear = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(self.avgpool(out).view(len(out), -1))


def bb_network(seed=0):
    torch.manual_seed(seed)
    net = BBPreActResNet18()
    for module in net.modules():  # running statistics that are not the identity, so eval mode means something
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def bb_logits(net, images):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["cifar10"])
    with torch.no_grad():
        return net((images.float() / 255 - mean) / std)


def stamp(image):
    image = image.copy()
    image[-3:, -3:] = 255
    return image


def write_cifar10(folder):
    """torchvision's CIFAR-10 layout, in the order BackdoorBench's indices refer to."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (TRAIN, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (TEST, 32, 32, 3), dtype=np.uint8)
    train_labels, test_labels = [i % 10 for i in range(TRAIN)], [i % 10 for i in range(TEST)]
    per = TRAIN // 5
    for b in range(5):
        with open(folder / f"data_batch_{b + 1}", "wb") as handle:
            pickle.dump({"data": train[b * per:(b + 1) * per].transpose(0, 3, 1, 2).reshape(per, -1), "labels": train_labels[b * per:(b + 1) * per]}, handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": test.transpose(0, 3, 1, 2).reshape(TEST, -1), "labels": test_labels}, handle)
    return train, np.array(train_labels), test, np.array(test_labels)


def bd_state(images, labels, poisoned, save_folder, write_folder, holds_all, pil_in_memory=False):
    """``prepro_cls_DatasetBD_v2.retrieve_state()`` as BackdoorBench makes it: PNGs under ``<save>/<label>/<index>.png``."""
    data_dict = {}
    for index in poisoned:
        image, original = stamp(images[index]), int(labels[index])
        if pil_in_memory:  # save_folder_path=None: the container keeps (image, bd_label, label) itself
            data_dict[np.int64(index)] = (Image.fromarray(image), TARGET, original)
            continue
        (write_folder / str(original)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(write_folder / str(original) / f"{index}.png")
        data_dict[np.int64(index)] = {"path": f"{save_folder}/{original}/{index}.png", "other_info": [TARGET, original]}
    indicator = np.zeros(len(images))
    indicator[poisoned] = 1
    return {"bd_data_container": {"save_folder_path": None if pil_in_memory else str(save_folder), "data_dict": data_dict,
                                  "save_file_format": ".png"},
            "getitem_all": True, "getitem_all_switch": False,
            "original_index_array": np.arange(len(images)) if holds_all else np.asarray(poisoned, dtype=np.int64),
            "poison_indicator": indicator, "save_folder_path": None if pil_in_memory else str(save_folder)}


@pytest.fixture
def bb_record(tmp_path, monkeypatch):
    """``<tmp>/record/badnet_demo/attack_result.pt`` with the clean data in ``<tmp>/data/cifar10``, as BackdoorBench lays them out;
    the recorded image paths point where the attack ran (another machine), as a copied record's do."""
    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    train, train_labels, test, test_labels = write_cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    record = tmp_path / "record" / "badnet_demo"
    record.mkdir(parents=True)
    elsewhere = Path("/mnt/cluster/BackdoorBench/record/badnet_demo")
    poisoned_train = list(range(3, TRAIN, 10))
    poisoned_test = [i for i in range(TEST) if test_labels[i] != TARGET]
    net = bb_network()
    content = {"model_name": "preactresnet18", "num_classes": 10, "model": net.state_dict(), "data_path": "./data/cifar10",
               "img_size": [32, 32, 3], "clean_data": "cifar10",
               "bd_train": bd_state(train, train_labels, poisoned_train, elsewhere / "bd_train_dataset", record / "bd_train_dataset", True),
               "bd_test": bd_state(test, test_labels, poisoned_test, elsewhere / "bd_test_dataset", record / "bd_test_dataset", False)}
    torch.save(content, record / "attack_result.pt")
    return {"path": record / "attack_result.pt", "net": net, "train": train, "test": test, "test_labels": test_labels,
            "poisoned_train": poisoned_train, "poisoned_test": poisoned_test, "content": content}


def test_import_reads_backdoorbenchs_file_and_gives_its_networks_logits(bb_record):
    victim = import_victim(bb_record["path"], "smoke")
    images = torch.from_numpy(bb_record["test"]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ours = victim.model.float()(images.float() / 255)
    assert torch.allclose(ours, bb_logits(bb_record["net"], images), atol=1e-4)
    assert victim.profile.width == 64 and victim.profile.dataset == "cifar10" and victim.attack.target == TARGET
    poisons = victim.poisoned_train()
    assert poisons.poisoned.tolist() == bb_record["poisoned_train"] and victim.poison_rate == pytest.approx(0.1)
    first = bb_record["poisoned_train"][0]
    assert np.array_equal(poisons.data.images[first].permute(1, 2, 0).numpy(), stamp(bb_record["train"][first]))
    assert (poisons.data.labels[poisons.poisoned] == TARGET).all()
    triggered = victim.triggered_test()  # the file's poisoned test images, with their true labels
    assert triggered.indices.tolist() == bb_record["poisoned_test"]
    assert triggered.labels.tolist() == bb_record["test_labels"][bb_record["poisoned_test"]].tolist()
    assert {"acc", "asr", "ra"} <= set(victim.metrics)


def test_defend_runs_on_an_imported_victim(bb_record):
    from purify_lib.defend import defend

    victim = import_victim(bb_record["path"], "smoke")
    for name in ("ft", "pad"):  # clean defense data from its training set; PAD on its poisoned training set
        result = defend(victim, name, victim.profile)
        assert {"acc", "asr"} <= set(result.history[-1])
    assert defend(victim, "ft", victim.profile).cache_hit


def test_export_then_import_gives_equal_logits_and_backdoorbenchs_layout(bb_record, tmp_path):
    victim = import_victim(bb_record["path"], "smoke")
    out = tmp_path / "record" / "round_trip"
    path = export_victim(victim, out)
    content = torch.load(path, weights_only=False)  # our own file: read as BackdoorBench's loader reads it
    assert set(content["model"]) == set(bb_record["content"]["model"])
    assert content["bd_train"]["original_index_array"].tolist() == list(range(TRAIN))
    assert content["bd_test"]["original_index_array"].tolist() == bb_record["poisoned_test"]
    entry = content["bd_train"]["bd_data_container"]["data_dict"][bb_record["poisoned_train"][0]]
    assert Path(entry["path"]).is_file() and entry["other_info"] == [TARGET, int(victim.splits.train.labels[bb_record["poisoned_train"][0]])]
    net = BBPreActResNet18()
    net.load_state_dict(content["model"])  # BackdoorBench's own network takes it
    images = torch.from_numpy(bb_record["test"]).permute(0, 3, 1, 2).contiguous()
    assert torch.allclose(bb_logits(net.eval(), images), bb_logits(bb_record["net"], images), atol=1e-4)
    again = import_victim(path, "smoke")
    with torch.no_grad():
        assert torch.allclose(again.model.float()(images.float() / 255), victim.model.float()(images.float() / 255), atol=1e-4)
    assert torch.equal(again.poisoned_train().data.images, victim.poisoned_train().data.images)
    with pytest.raises(PurifyError, match="exists and is not empty"):
        export_victim(victim, out)


def test_export_folds_our_normalisation_into_the_first_convolution(bb_record, tmp_path):
    """A victim of ours normalises with CIFAR-10's exact standard deviations; BackdoorBench's rounds them."""
    victim = import_victim(bb_record["path"], "smoke")
    from purify_lib.datasets import get_spec

    spec = get_spec("cifar10")
    victim.model.normalize.std.copy_(torch.tensor(spec.std).view(1, 3, 1, 1))
    images = torch.from_numpy(bb_record["test"]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ours = victim.model.float()(images.float() / 255)
    net = BBPreActResNet18()
    net.load_state_dict(torch.load(export_victim(victim, tmp_path / "record" / "folded"), weights_only=False)["model"])
    assert torch.allclose(bb_logits(net.eval(), images), ours, atol=1e-4)


def test_bad_files_get_one_line_naming_what_was_expected(bb_record, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(PurifyError, match="not a torch file .*expected a BackdoorBench attack_result.pt"):
        import_victim(text)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(PurifyError, match="lacks bd_test, bd_train, clean_data"):
        import_victim(other)
    renamed = tmp_path / "record" / "vgg" / "attack_result.pt"
    renamed.parent.mkdir(parents=True)
    torch.save({**bb_record["content"], "model_name": "vgg19_bn"}, renamed)
    with pytest.raises(PurifyError, match="model_name 'vgg19_bn' has no counterpart here; allowed: preactresnet18"):
        import_victim(renamed)
    with pytest.raises(PurifyError, match="no such file"):
        import_victim(tmp_path / "missing.pt")


def test_pickled_objects_are_refused_not_run(bb_record, tmp_path):
    """BackdoorBench's in-memory mode pickles PIL images; a file may hold anything: neither is unpickled."""
    content = dict(bb_record["content"])
    content["bd_test"] = bd_state(bb_record["test"], bb_record["test_labels"], bb_record["poisoned_test"], None, None, False, pil_in_memory=True)
    in_memory = tmp_path / "in_memory.pt"
    torch.save(content, in_memory)
    with pytest.raises(PurifyError, match="PIL objects inside the pickle .*in-memory mode"):
        import_victim(in_memory)
    hostile = tmp_path / "hostile.pt"
    torch.save({**bb_record["content"], "model_name": BBPreActResNet18}, hostile)
    with pytest.raises(PurifyError, match="refused to unpickle .*BBPreActResNet18"):
        import_victim(hostile)


def test_clean_data_in_another_order_is_caught(bb_record, tmp_path):
    """An ImageFolder copy numbers images otherwise than torchvision's pickles: the stored original labels disagree."""
    from purify_lib.data import load_dataset

    reordered = tmp_path / "reordered"
    folder = reordered / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    source = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)]:  # the batches' rows in another order
        with open(source / name, "rb") as handle:
            batch = pickle.load(handle)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": batch["data"][::-1].copy(), "labels": batch["labels"][::-1]}, handle)
    (folder / "test_batch").write_bytes((source / "test_batch").read_bytes())
    assert len(load_dataset("cifar10", reordered).train) == TRAIN
    with pytest.raises(PurifyError, match="not in BackdoorBench's order"):
        import_victim(bb_record["path"], "smoke", data_root=reordered)


def test_the_scripts_import_and_refuse_in_one_line(bb_record, tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PURIFY_CACHE": str(tmp_path / "cache"), "PURIFY_ZOO": str(tmp_path / "zoo")}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_backdoorbench.py"), str(bb_record["path"]), "--profile", "smoke"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bb-badnet_demo: preactresnet18 width 64 on cifar10, target 0, 30 poisoned training images" in done.stdout
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_backdoorbench.py"), "badnets:0.1", str(tmp_path / "out"),
                              "--profile", "smoke"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "profile smoke trains width 8; BackdoorBench's preactresnet18 has width 64" in refused.stderr and not (tmp_path / "out").exists()


def test_notebook_06_runs_an_imported_victim_by_path(bb_record, tmp_path, monkeypatch):
    from purify_lib import execution

    monkeypatch.setenv("PURIFY_BUILD", str(tmp_path / "build"))
    result = execution.execute("06_main_tables", "smoke", {"imported": [str(bb_record["path"])], "defenses": ["ft", "lp"]})
    assert result["status"] == "ran", result.get("error")
    import pandas as pd

    table = pd.read_csv(tmp_path / "build" / "figures" / "smoke" / "main_table.csv")
    assert set(table["attack"].dropna()) - {"average (backdoored victims)"} == {"bb-badnet_demo"}  # `victims` left empty: the imported alone
    assert {"none", "ft", "lp"} <= set(table["defense"])
