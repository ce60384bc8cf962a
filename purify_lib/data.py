"""Datasets as uint8 tensors in memory, deterministic splits, batched on-device augmentation.

Images are held as ``uint8`` tensors of shape ``(N, C, H, W)``; models take floats in
``[0, 1]`` and normalise inside (see ``models.py``), so attacks and defenses all work in
pixel space.

Where the data comes from, in order:

1. an explicit ``root`` argument;
2. the ``PURIFY_DATA`` environment variable;
3. the offline stand-in beside a development checkout (``../shared/data/<name>-jpeg.zip``);
4. torchvision's download into the cache directory.

``root`` may be an ImageFolder tree (``train/<class>/*``, ``test/<class>/*``), a zip of
one, or a folder in the dataset's usual layout (torchvision's CIFAR pickles and GTSRB folders,
Tiny-ImageNet's own: each dataset's module in ``datasets/`` reads its own, CIFAR's pickles
without unpickling anything but arrays).  Images of another size are resized to the dataset's.
Whatever the source, the decoded tensors are cached once under ``cache_dir()/data``, keyed by
the dataset's name and the source's content.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import DATASETS as SPECS, get_spec
from .datasets.base import DataNotFound, decode_entries
from .errors import PurifyError
from .files import atomic_path, sha256_file
from .seeds import stream

DATA_ENV = "PURIFY_DATA"
CACHE_ENV = "PURIFY_CACHE"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

DATASETS = {name: spec.num_classes for name, spec in SPECS.items()}  # every dataset's name and number of classes


def cache_dir() -> Path:
    """Root of everything this project caches (decoded data, the victim zoo)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "purify"))


@dataclass
class ImageSet:
    """uint8 images ``(N, C, H, W)`` with int64 labels, plus where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None = None  # positions in the parent set, when a subset

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        parent = self.indices if self.indices is not None else torch.arange(len(self))
        return ImageSet(self.images[index], self.labels[index], parent[index])

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.indices)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1


@dataclass
class Dataset:
    name: str
    source: str  # what the data was decoded from; part of every victim's cache key
    train: ImageSet
    test: ImageSet
    num_classes: int


def check_dataset_name(name: str) -> None:
    get_spec(name)


def load_dataset(name: str = "cifar10", root: str | os.PathLike | None = None) -> Dataset:
    """Load ``name`` as uint8 tensors, decoding once and caching the result."""
    check_dataset_name(name)
    source = _find_source(name, root)
    tag = _source_tag(source)
    cached = cache_dir() / "data" / f"{name}-{tag}.npz"
    if not cached.exists():
        arrays = _decode(name, source)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
    with np.load(cached, allow_pickle=False) as arrays:
        train = ImageSet(torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"]).long())
        test = ImageSet(torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"]).long())
    return Dataset(name, f"{name}-{tag}", train, test, get_spec(name).num_classes)


def _find_source(name: str, root) -> Path | str:
    if root is not None:
        path = Path(root).expanduser()
        if not path.exists():
            raise DataNotFound(f"dataset root {str(path)!r} does not exist; pass an ImageFolder tree, a zip of one, or a torchvision {name} folder")
        return path
    if os.environ.get(DATA_ENV):
        path = Path(os.environ[DATA_ENV]).expanduser()
        if not path.exists():
            raise DataNotFound(f"{DATA_ENV}={str(path)!r} does not exist; point it at an ImageFolder tree, a zip of one, or a torchvision {name} folder")
        return path
    standin = PROJECT_ROOT.parent / "shared" / "data" / f"{name}-jpeg.zip"
    if standin.exists():
        return standin
    return "torchvision-download"


def _source_tag(source) -> str:
    """A name for the data source that depends on its content, not on where or when it was copied.

    A zip (or any file) is tagged by the SHA-256 of its bytes, remembered per path, size and
    mtime so it is hashed once; a folder by its files' relative paths and sizes.  So the same
    CIFAR-10 copy gives the same victim keys on every machine and after every re-provisioning.
    """
    if source == "torchvision-download":
        return "torchvision"
    path = Path(source).resolve()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}|{file.stat().st_size}\n".encode())
        return f"{path.name}-{digest.hexdigest()[:12]}"
    stat = path.stat()
    memo_file = cache_dir() / "data" / "source-tags.json"
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    if memo_key not in memo:
        memo[memo_key] = sha256_file(path)[:12]
        with atomic_path(memo_file) as tmp:
            tmp.write_text(json.dumps(memo, indent=1))
    return f"{path.stem}-{memo[memo_key]}"


def _decode(name: str, source) -> dict[str, np.ndarray]:
    spec = get_spec(name)
    if source == "torchvision-download":
        if spec.download is None:
            raise DataNotFound(f"{name} not found and {spec.where}; or set {DATA_ENV} to it, or to an ImageFolder tree or zip "
                               "(train/<class>/*, test/<class>/*)")
        try:
            arrays = spec.download(cache_dir() / "data" / "torchvision")
        except DataNotFound as exc:
            raise DataNotFound(f"{name} not found ({exc}); either pass root= / set {DATA_ENV} to an ImageFolder tree or zip "
                               "(train/<class>/*, test/<class>/*), or run where torchvision can download it") from None
        return _checked(name, arrays)
    path = Path(source)
    if path.is_file() and zipfile.is_zipfile(path):
        return _checked(name, _from_imagefolder_zip(path, spec.size))
    if (path / "train").is_dir() and (path / "test").is_dir() and not (path / "val").is_dir():
        return _checked(name, _from_imagefolder_dir(path, spec.size))
    arrays = spec.read_layout(path) if path.is_dir() else None
    if arrays is None:
        raise DataNotFound(f"{str(path)!r} is not a {name} folder (its usual layout: see purify_lib/datasets/{name}.py); "
                           f"either pass root= / set {DATA_ENV} to an ImageFolder tree or zip (train/<class>/*, test/<class>/*), "
                           f"or run where torchvision can download it" + ("" if spec.download else f" ({spec.where})"))
    return _checked(name, arrays)


def _checked(name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The decoded arrays, if their labels fit the dataset's classes (else nothing is cached)."""
    classes = get_spec(name).num_classes
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if len(labels) and not 0 <= labels.min() <= labels.max() < classes:
            raise DataNotFound(f"the {split} labels read for {name} run from {labels.min()} to {labels.max()}; {name} has {classes} classes")
    return arrays


def _from_imagefolder_zip(path: Path, size: int) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/") and n.count("/") >= 2)
        entries = [(n.split("/")[-3], n.split("/")[-2], lambda n=n: archive.read(n)) for n in names]
        return decode_entries(entries, size)


def _from_imagefolder_dir(path: Path, size: int) -> dict[str, np.ndarray]:
    files = sorted(p for p in path.glob("*/*/*") if p.is_file())
    return decode_entries(((p.parts[-3], p.parts[-2], p.read_bytes) for p in files), size)


DEFENSE_DATA = ("train", "reserve")


@dataclass
class Splits:
    """The attack-training set, the clean set reserved for defenses (empty under the papers' protocol), and the test set."""

    train: ImageSet
    reserve: ImageSet
    test: ImageSet
    num_classes: int
    full_train_size: int  # the dataset's whole training set
    defense_from: str = "train"  # where ``defense_data`` draws: "train" (the papers') or "reserve" (held out)

    @property
    def defense_pool(self) -> ImageSet:
        """The clean images defense data is drawn from: the clean originals of the victim's training images
        (BackdoorBench's ``clean_train``, which FST, D3 and NFT build on), or the held-out reserve."""
        return self.train if self.defense_from == "train" else self.reserve

    @property
    def defense_base_size(self) -> int:
        """What a paper's defense-data fraction is a share of: the training set (BackdoorBench's ``ratio`` times
        ``len(clean_train)``); for the held-out reserve, the full training set it was cut from."""
        return len(self.train) if self.defense_from == "train" else self.full_train_size

    def defense_data(self, fraction: float, seed: int = 0) -> ImageSet:
        """A seeded, class-balanced ``fraction`` of ``defense_base_size``, drawn from ``defense_pool``.

        Under the papers' protocol the originals of poisoned training images may be drawn, with their
        true labels, as BackdoorBench's ``choose_index`` samples all of ``clean_train``."""
        count = round(fraction * self.defense_base_size)
        pool = self.defense_pool
        if not 0 < count <= len(pool):
            raise PurifyError(f"defense data fraction {fraction} means {count} images; the {self.defense_from} set holds {len(pool)}"
                              + (f" (reserve_fraction {len(pool) / self.full_train_size:g})" if self.defense_from == "reserve" else ""))
        return balanced_subset(pool, count, self.num_classes, seed)


def make_splits(
    dataset: Dataset,
    seed: int = 0,
    reserve_fraction: float = 0.05,
    train_size: int | None = None,
    test_size: int | None = None,
    balanced: bool = True,
    defense_from: str = "reserve",
) -> Splits:
    """Disjoint, seeded splits of ``dataset``.

    The reserve is ``reserve_fraction`` of the full training set (class-balanced when
    ``balanced``); the attack-training set is drawn from what is left, ``train_size``
    images of it when given; ``test_size`` subsamples the test set (class-balanced).
    Each of the three draws has its own random stream (``seeds.stream``).  ``defense_from``
    says where ``Splits.defense_data`` draws (``DEFENSE_DATA``).
    """
    if not 0 <= reserve_fraction < 1:
        raise PurifyError(f"reserve_fraction={reserve_fraction} must be in [0, 1)")
    if defense_from not in DEFENSE_DATA:
        raise PurifyError(f"defense_data={defense_from!r} is not one of {', '.join(DEFENSE_DATA)}")
    if defense_from == "reserve" and reserve_fraction == 0:
        raise PurifyError("defense_data='reserve' needs reserve_fraction > 0 (the held-out share of the training set)")
    full = dataset.train
    reserve_count = round(reserve_fraction * len(full))
    reserve_stream = stream("reserve", seed)
    if balanced:
        reserve_index = _balanced_choice(full.labels, reserve_count, dataset.num_classes, reserve_stream)
    else:
        reserve_index = torch.randperm(len(full), generator=reserve_stream)[:reserve_count]
    is_reserved = torch.zeros(len(full), dtype=torch.bool)
    is_reserved[reserve_index] = True
    rest = torch.nonzero(~is_reserved).squeeze(1)
    if train_size is not None:
        if train_size > len(rest):
            raise PurifyError(f"train_size={train_size} exceeds the {len(rest)} training images left after the reserve")
        rest = rest[torch.randperm(len(rest), generator=stream("train-subset", seed))[:train_size]]
    test = dataset.test
    if test_size is not None and test_size < len(test):
        test = test.subset(_balanced_choice(test.labels, test_size, dataset.num_classes, stream("test-subset", seed)))
    return Splits(full.subset(rest.sort().values), full.subset(reserve_index.sort().values), test, dataset.num_classes, len(full),
                  defense_from)


def _balanced_choice(labels: torch.Tensor, count: int, num_classes: int, generator) -> torch.Tensor:
    """``count`` indices spread as evenly as possible over the classes."""
    per_class = [count // num_classes + (1 if c < count % num_classes else 0) for c in range(num_classes)]
    chosen = []
    for c, k in enumerate(per_class):
        members = torch.nonzero(labels == c).squeeze(1)
        if k > len(members):
            raise PurifyError(f"class {c} has {len(members)} images; {k} were asked for")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen)


def balanced_subset(images: ImageSet, count: int, num_classes: int, seed: int = 0) -> ImageSet:
    """A seeded, class-balanced subset of ``count`` images (used for defense data), from its own stream."""
    return images.subset(_balanced_choice(images.labels, count, num_classes, stream("defense-data", seed, count)))


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def augment(images: torch.Tensor, padding: int = 4, flip: bool = True, generator=None) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, done for a whole batch at once.

    Equivalent to torchvision's RandomCrop(32, padding) + RandomHorizontalFlip per sample,
    without the per-sample Python overhead: one advanced-indexing gather on the device.
    """
    n, _, height, width = images.shape
    device = images.device
    if padding:
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        top = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
        left = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
        rows = (top[:, None] + torch.arange(height, device=device))[:, :, None]
        cols = (left[:, None] + torch.arange(width, device=device))[:, None, :]
        batch = torch.arange(n, device=device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        flipped = torch.rand(n, device=device, generator=generator) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    return images
