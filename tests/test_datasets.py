"""Each dataset read from files generated here in its usual layout (never a download), the models and triggers at
each image size, and a generated CIFAR-100 set through a smoke victim and one defense."""
import csv
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from purify_lib.data import load_dataset
from purify_lib.datasets import DATASETS, get_spec
from purify_lib.errors import PurifyError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    return tmp_path


def pixels(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_cifar(root, folder, batches, label_key, per_batch, classes, bytes_keys=False):
    """torchvision's CIFAR python layout: pickled dicts of a (N, 3072) uint8 array and a list of labels."""
    (root / folder).mkdir(parents=True)
    expected = {}
    for index, name in enumerate(batches):
        images = pixels(per_batch, 32, index)
        labels = [(i + index) % classes for i in range(per_batch)]
        batch = {"data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1), label_key: labels, "batch_label": name}
        if bytes_keys:  # as Python 2 wrote the published files
            batch = {key.encode(): value for key, value in batch.items()}
        with open(root / folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        expected[name] = (images.transpose(0, 3, 1, 2), labels)
    return expected


def test_cifar10_pickles_read_in_their_order(cache):
    root = cache / "c10"
    expected = write_cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 4, 10,
                           bytes_keys=True)
    dataset = load_dataset("cifar10", root)
    assert dataset.train.images.shape == (20, 3, 32, 32) and dataset.test.images.shape == (4, 3, 32, 32)
    assert np.array_equal(dataset.train.images[4:8].numpy(), expected["data_batch_2"][0])
    assert dataset.train.labels[4:8].tolist() == expected["data_batch_2"][1]
    assert np.array_equal(dataset.test.images.numpy(), expected["test_batch"][0])


def test_cifar100_pickles_use_the_fine_labels(cache):
    root = cache / "c100"
    expected = write_cifar(root, "cifar-100-python", ["train", "test"], "fine_labels", 300, 100)
    dataset = load_dataset("cifar100", root / "cifar-100-python")  # the folder itself works too
    assert dataset.num_classes == 100 and dataset.train.labels.tolist() == expected["train"][1]
    assert np.array_equal(dataset.test.images.numpy(), expected["test"][0])


def test_a_cifar_batch_holding_any_other_object_is_refused_not_unpickled(cache):
    root = cache / "bad"
    write_cifar(root, "cifar-100-python", ["train", "test"], "fine_labels", 10, 100)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(root / "cifar-100-python" / "train", "wb") as handle:
        pickle.dump({"data": Payload(), "fine_labels": []}, handle)
    with pytest.raises(PurifyError, match="refused to unpickle builtins.print"):
        load_dataset("cifar100", root)


def test_gtsrb_torchvision_layout_is_resized_to_32(cache):
    base = cache / "gtsrb_root" / "gtsrb"
    sizes = [(40, 35), (29, 31)]
    for c in range(43):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(np.full((h, w, 3), c * 5, dtype=np.uint8)).save(folder / f"00000_{i:05d}.ppm")
    (base / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    with open(base / "GT-final_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i, c in enumerate([7, 42, 0]):
            Image.fromarray(np.full((50, 45, 3), c * 5, dtype=np.uint8)).save(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm")
            writer.writerow([f"{i:05d}.ppm", 45, 50, 0, 0, 45, 50, c])
    dataset = load_dataset("gtsrb", cache / "gtsrb_root")
    assert dataset.train.images.shape == (86, 3, 32, 32) and dataset.test.images.shape == (3, 3, 32, 32)
    assert dataset.train.labels.tolist() == [c for c in range(43) for _ in sizes]
    assert dataset.test.labels.tolist() == [7, 42, 0] and int(dataset.test.images[1].float().mean()) == 42 * 5


def write_tiny(base, per_class=1, classes=200):
    wnids = [f"n{index:08d}" for index in range(classes)][::-1]  # listed out of order: classes are the sorted wnids
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for index, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((64, 64, 3), index % 256, dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG", quality=100)
    rows = []
    for i, wnid in enumerate(wnids[:5]):
        Image.fromarray(np.full((64, 64, 3), 100, dtype=np.uint8)).save(base / "val" / "images" / f"val_{i}.JPEG", quality=100)
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return sorted(wnids), wnids[:5]


def test_tiny_imagenet_layout_is_64_with_the_val_set_as_test(cache):
    order, val_wnids = write_tiny(cache / "tiny" / "tiny-imagenet-200")
    dataset = load_dataset("tiny_imagenet", cache / "tiny")
    assert dataset.train.images.shape == (200, 3, 64, 64) and dataset.num_classes == 200
    assert dataset.train.labels.tolist() == list(range(200))
    assert dataset.test.labels.tolist() == [order.index(w) for w in val_wnids]


@pytest.mark.parametrize("name", ["cifar100", "gtsrb", "tiny_imagenet"])
def test_an_imagefolder_zip_works_for_each_dataset_at_its_size(cache, name):
    spec = get_spec(name)
    archive = cache / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "test"):
            for c in range(spec.num_classes):
                image = Image.fromarray(np.full((45, 37, 3), c % 256, dtype=np.uint8))  # another size than the dataset's
                path = cache / "img.png"
                image.save(path)
                zf.write(path, f"{split}/class_{c:03d}/0.png")
    dataset = load_dataset(name, archive)
    assert dataset.train.images.shape == (spec.num_classes, 3, spec.size, spec.size)
    assert dataset.train.labels.tolist() == list(range(spec.num_classes))


def test_no_download_for_tiny_imagenet_says_where_to_get_it(cache, monkeypatch):
    monkeypatch.delenv("PURIFY_DATA", raising=False)
    monkeypatch.setattr("purify_lib.data.PROJECT_ROOT", cache)  # no stand-in beside this "checkout"
    with pytest.raises(PurifyError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny_imagenet")


def test_two_datasets_never_share_a_victim_key(cache):
    """The same files read as three datasets: the data source (part of every victim key) starts with the
    dataset's name, so no two datasets can be served each other's victims."""
    from purify_lib.profiles import get_profile
    from purify_lib.zoo import config_key, victim_config

    archive = cache / "same.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "test"):
            for c in range(10):
                path = cache / "img.png"
                Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
                zf.write(path, f"{split}/{c:03d}/0.png")
    sources = {name: load_dataset(name, archive).source for name in ("cifar10", "cifar100", "gtsrb")}
    assert all(source.startswith(f"{name}-") for name, source in sources.items()) and len(set(sources.values())) == 3
    keys = {config_key(victim_config(get_profile("smoke", dataset=name), None, 0.0, source, 0, "fp32")) for name, source in sources.items()}
    assert len(keys) == 3


@pytest.mark.parametrize("model", ["preactresnet18", "resnet18", "vgg19bn"])
@pytest.mark.parametrize("size", [32, 64])
def test_every_model_takes_every_size(model, size):
    from purify_lib.models import make_model

    net = make_model(model, 200, 8, "tiny_imagenet").eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, size, size)).shape == (2, 200)
        assert net.features(torch.rand(2, 3, size, size)).shape[1] == net.head.in_features


def test_triggers_are_made_at_the_images_size():
    from purify_lib.attacks import make_attack

    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    badnets = make_attack("badnets")
    stamped = badnets.apply(images)
    assert stamped[:, :, :40, :40].sum() == 0 and stamped[:, :, -3:, -3:].float().mean() > 100  # the corner patch, at 64x64
    assert torch.equal(badnets.apply(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))[0], badnets.pattern)  # 32x32 as before
    for name in ("blended", "sig", "lf", "wanet"):
        attack = make_attack(name, **({"size": 64} if name == "wanet" else {}))
        assert attack.apply(images).shape == images.shape
    assert not torch.equal(make_attack("blended").apply(images)[0, :, :32, :32], make_attack("blended").apply(images[:, :, :32, :32])[0])


def test_an_attack_built_for_32x32_only_is_refused_at_64(cache):
    from purify_lib.data import Dataset, ImageSet, make_splits
    from purify_lib.zoo import _checked_attack

    images = ImageSet(torch.zeros(400, 3, 64, 64, dtype=torch.uint8), torch.arange(400) % 200)
    splits = make_splits(Dataset("tiny_imagenet", "x", images, images, 200), 0, 0.0, defense_from="train")
    with pytest.raises(PurifyError, match="'iad' is built for 32x32 images here, and these are 64x64; the attacks made at any size: badnets, blended, lf, sig, wanet"):
        _checked_attack("iad", {}, 0.1, splits)
    assert _checked_attack("wanet", {}, 0.1, splits).size == 64


def test_the_paper_profile_takes_backdoorbenchs_recipe_for_each_dataset():
    from purify_lib.profiles import get_profile

    assert get_profile("paper", dataset="gtsrb").recipe.epochs == 50
    assert get_profile("paper", dataset="tiny_imagenet").recipe.epochs == 200
    assert get_profile("paper", dataset="cifar100").recipe == get_profile("paper").recipe
    assert get_profile("cpu", dataset="gtsrb").recipe == get_profile("cpu").recipe  # cpu keeps its own recipe
    with pytest.raises(PurifyError, match="unknown dataset 'mnist'"):
        get_profile("paper", dataset="mnist")


def test_a_generated_cifar100_trains_a_smoke_victim_and_runs_a_defense(cache, monkeypatch):
    """End to end on 100 classes: the smoke profile's 2,000 training and 500 test images, BadNets, then FT."""
    from purify_lib.defend import defend
    from purify_lib.profiles import get_profile
    from purify_lib.zoo import get_victim

    write_cifar(cache / "c100", "cifar-100-python", ["train", "test"], "fine_labels", 2000, 100)
    monkeypatch.setenv("PURIFY_DATA", str(cache / "c100"))
    profile = get_profile("smoke", dataset="cifar100")
    victim = get_victim("badnets", 0.1, profile, progress=False)
    assert victim.model.head.out_features == 100 and victim.record["config"]["data"].startswith("cifar100-")
    assert {"acc", "asr", "ra"} <= set(victim.metrics) and len(victim.poisoned_train().poisoned) == 200
    result = defend(victim, "ft", profile)
    assert {"acc", "asr"} <= set(result.history[-1]) and not result.cache_hit
    assert defend(victim, "ft", profile).cache_hit


def test_notebook_06_sets_the_published_cells_of_its_dataset_beside_ours():
    """FST's Table 3 is GTSRB's: a GTSRB run meets its cells, a CIFAR-10 run meets CIFAR-10's, never the other's."""
    import pandas as pd

    from purify_lib import paper_tables
    from purify_lib.profiles import get_profile
    from purify_lib.sweep import beside_published

    tables = paper_tables.load()
    ours = pd.DataFrame([{"attack": "badnets", "rate": 0.005, "defense": "fst", "acc": 90.0, "asr": 1.0}])
    gtsrb = beside_published(ours, tables, get_profile("cpu", dataset="gtsrb"))
    cifar = beside_published(ours, tables, get_profile("cpu"))
    assert gtsrb["source"].dropna().str.contains("FST Table 3").any()
    assert not cifar["source"].dropna().str.contains("FST Table 3").any()
    assert gtsrb["published ASR"].tolist() != cifar["published ASR"].tolist()
