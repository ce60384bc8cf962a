import zipfile

import numpy as np
import pytest
import torch

from purify_lib.data import DataNotFound, ImageSet, augment, load_dataset, make_splits, Dataset
from purify_lib.errors import PurifyError


def fake_dataset(n_train=1000, n_test=200):
    generator = torch.Generator().manual_seed(0)
    train = ImageSet(torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(n_train) % 10)
    test = ImageSet(torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(n_test) % 10)
    return Dataset("cifar10", "fake", train, test, 10)


def test_splits_disjoint_deterministic_balanced():
    dataset = fake_dataset()
    a = make_splits(dataset, seed=0, reserve_fraction=0.1, train_size=500, test_size=100)
    b = make_splits(dataset, seed=0, reserve_fraction=0.1, train_size=500, test_size=100)
    c = make_splits(dataset, seed=1, reserve_fraction=0.1, train_size=500, test_size=100)
    assert set(a.train.indices.tolist()).isdisjoint(a.reserve.indices.tolist())
    assert len(a.train) == 500 and len(a.reserve) == 100 and len(a.test) == 100
    assert torch.equal(a.train.indices, b.train.indices) and torch.equal(a.reserve.indices, b.reserve.indices)
    assert not torch.equal(a.reserve.indices, c.reserve.indices)
    assert (a.reserve.labels.bincount() == 10).all() and (a.test.labels.bincount() == 10).all()
    assert torch.equal(a.train.images, dataset.train.images[a.train.indices])


def test_split_too_large_fails():
    with pytest.raises(PurifyError, match="train_size=990 exceeds the 900"):
        make_splits(fake_dataset(), reserve_fraction=0.1, train_size=990)


def test_augment_is_crop_and_flip():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    assert torch.equal(augment(x, padding=0, flip=False), x)
    out = augment(x, padding=4, flip=False)
    assert out.shape == x.shape
    # every output row is a shifted window of the zero-padded input
    padded = torch.nn.functional.pad(x, (4,) * 4)
    for n in range(2):
        assert any(torch.equal(out[n], padded[n, :, t : t + 32, l : l + 32]) for t in range(9) for l in range(9))
    flipped = augment(x, padding=0, flip=True)
    for n in range(2):
        assert torch.equal(flipped[n], x[n]) or torch.equal(flipped[n], x[n].flip(2))


def test_imagefolder_zip_is_decoded_and_cached(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "test"):
            for cls, value in (("a_cls", 10), ("b_cls", 200)):
                for i in range(2):
                    image = Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8))
                    path = tmp_path / "img.png"
                    image.save(path)
                    zf.write(path, f"{split}/{cls}/{i}.png")
    dataset = load_dataset("cifar10", archive)
    assert dataset.train.images.shape == (4, 3, 32, 32)
    assert dataset.train.labels.tolist() == [0, 0, 1, 1]
    assert int(dataset.train.images[2].float().mean()) == 200
    assert len(list((tmp_path / "cache" / "data").glob("*.npz"))) == 1


def test_missing_dataset_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("PURIFY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFound, match="PURIFY_DATA=.*nowhere.*does not exist"):
        load_dataset("cifar10")
    monkeypatch.delenv("PURIFY_DATA")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFound, match="ImageFolder tree or zip.*torchvision can download"):
        load_dataset("cifar10", empty)


def test_unknown_dataset_fails():
    with pytest.raises(PurifyError, match="unknown dataset 'mnist'; allowed: cifar10, cifar100, gtsrb, tiny_imagenet"):
        load_dataset("mnist")


def test_source_tag_follows_content_not_path_or_time(tmp_path, monkeypatch):
    """Victim keys must survive a re-provisioned or differently mounted copy of the same data."""
    import os

    from purify_lib.data import _source_tag

    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "cifar10-jpeg.zip", tmp_path / "b" / "cifar10-jpeg.zip"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"same bytes")
    os.utime(second, (1, 1))
    assert _source_tag(first) == _source_tag(second)
    second.write_bytes(b"other bytes")
    assert _source_tag(first) != _source_tag(second)
