"""``DatasetSpec``, the registry, and what the readers share: resizing, ImageFolder decoding, a safe unpickler."""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import PurifyError

DATASETS: dict[str, "DatasetSpec"] = {}


class DataNotFound(PurifyError):
    """No copy of a dataset could be found or downloaded."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    size: int  # images are size x size; files of another size are resized on reading
    mean: tuple[float, float, float]  # the normalisation every model applies inside (models.Normalize)
    std: tuple[float, float, float]
    read_layout: Callable[[Path], dict | None]  # its usual layout under a folder -> arrays, or None if the folder is not one
    download: Callable[[Path], dict] | None  # torchvision's download into a folder -> arrays; None where torchvision has none
    where: str  # where a user gets it, for the error that says it was not found
    published: str  # its name in the papers' tables (../shared/paper_tables)
    # BackdoorBench's config/attack/prototype/<name>.yaml as Recipe fields (the paper profile's recipe for this dataset)
    paper_recipe: dict = field(default_factory=dict)
    paper_recipe_note: str = ""  # what of BackdoorBench's recipe the Recipe cannot say

    def __post_init__(self):
        DATASETS[self.name] = self


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise PurifyError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def to_chw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_image(data: bytes | Path, size: int) -> np.ndarray:
    """An image file as uint8 ``(3, size, size)``, resized (bilinear, as torchvision's ``Resize`` on PIL images) only if it differs."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return to_chw(np.asarray(image))


def decode_entries(entries, size: int) -> dict[str, np.ndarray]:
    """entries: iterable of (split, class_name, read_bytes) for every image file of an ImageFolder tree or zip.
    Classes are numbered in sorted order (ImageFolder's); images keep the listing's order within a class."""
    grouped: dict[str, list] = {"train": [], "test": []}
    for split, class_name, read in entries:
        if split in grouped:
            grouped[split].append((class_name, read))
    out = {}
    for split, items in grouped.items():
        if not items:
            raise DataNotFound(f"no {split}/<class>/ images found in the ImageFolder source")
        classes = sorted({class_name for class_name, _ in items})
        items.sort(key=lambda item: item[0])
        out[f"{split}_images"] = np.stack([decode_image(read(), size) for _, read in items])
        out[f"{split}_labels"] = np.asarray([classes.index(class_name) for class_name, _ in items], dtype=np.int64)
    return out


# The globals a pickle of numpy arrays and scalars names, under numpy 1's and numpy 2's module paths: all that a
# restricted unpickler needs to allow for them (CIFAR's batches here, BackdoorBench's attack results in ``interop``).
NUMPY_GLOBALS = tuple((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")) \
    + (("numpy", "ndarray"), ("numpy", "dtype"))


def numpy_global(module: str, name: str):
    """The object one of ``NUMPY_GLOBALS`` names, found where the installed numpy keeps it."""
    import importlib

    if hasattr(np, "_core"):  # numpy 2 reads numpy 1's names (the published files') from their new home
        module = module.replace("numpy.core", "numpy._core")
    return getattr(importlib.import_module(module), name)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, nothing else: CIFAR's batches need no more."""

    # with how pickle protocol 2 writes bytes from Python 3: a string to bytes, nothing more
    ALLOWED = {*NUMPY_GLOBALS, ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in NUMPY_GLOBALS:
            return numpy_global(module, name)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise PurifyError(f"refused to unpickle {module}.{name}: a CIFAR batch holds only arrays, lists and bytes")


def load_batch(path: Path) -> dict:
    """One CIFAR python batch (``data_batch_1``, ``test``, ...), unpickled without running any object's code."""
    with open(path, "rb") as handle:
        batch = _ArraysOnly(handle, encoding="latin1").load()
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def cifar_layout(folder_name: str, train_files: list[str], test_file: str, label_key: str) -> Callable[[Path], dict | None]:
    """A reader of torchvision's CIFAR layout (``<root>/<folder_name>/<batch files>``, or the folder itself)."""

    def read(root: Path) -> dict | None:
        folder = root / folder_name if (root / folder_name).is_dir() else root
        if not all((folder / name).is_file() for name in [*train_files, test_file]):
            return None
        out = {}
        for split, names in (("train", train_files), ("test", [test_file])):
            batches = [load_batch(folder / name) for name in names]
            out[f"{split}_images"] = np.ascontiguousarray(np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
                                                          .reshape(-1, 3, 32, 32))
            out[f"{split}_labels"] = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        return out

    return read


def torchvision_download(class_name: str, layout: Callable[[Path], dict | None]) -> Callable[[Path], dict]:
    """Download with torchvision's class into ``root``, then read the files it wrote with ``layout``."""

    def download(root: Path) -> dict:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        try:
            if class_name == "GTSRB":
                for split in ("train", "test"):
                    cls(str(root), split=split, download=True)
            else:
                cls(str(root), train=True, download=True)
        except Exception as exc:  # no network
            raise DataNotFound(f"download failed ({type(exc).__name__})") from None
        return layout(root)

    return download
