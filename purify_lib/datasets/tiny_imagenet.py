"""Tiny-ImageNet (Le & Yang, 2015): 200 classes, 64x64; its own layout, ``tiny-imagenet-200/``:
``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` with ``val/val_annotations.txt``
(``<file>\\t<wnid>\\t...``).  Its validation set is the test set, as in BackdoorBench; classes are the
wnids in sorted order (ImageFolder's, as BackdoorBench's ``TinyImageNet`` reads them).

torchvision has no download for it: get ``http://cs231n.stanford.edu/tiny-imagenet-200.zip`` and unzip it.
Normalisation: BackdoorBench's.  Recipe: its ``config/attack/prototype/tiny.yaml``, 200 epochs at lr 0.01,
batch 128; BackdoorBench steps ``ReduceLROnPlateau``, which the Recipe has not, so ours is cosine."""
from pathlib import Path

import numpy as np

from .base import DatasetSpec, decode_image

SIZE = 64


def read(root: Path) -> dict | None:
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    annotations = base / "val" / "val_annotations.txt"
    if not ((base / "train").is_dir() and annotations.is_file()):
        return None
    wnids = sorted((base / "wnids.txt").read_text().split()) if (base / "wnids.txt").is_file() else \
        sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    index = {wnid: label for label, wnid in enumerate(wnids)}
    train = [(path, index[wnid]) for wnid in wnids for path in sorted((base / "train" / wnid / "images").glob("*.JPEG"))]
    rows = [line.split("\t") for line in annotations.read_text().splitlines() if line.strip()]
    test = [(base / "val" / "images" / row[0], index[row[1]]) for row in sorted(rows)]
    return {f"{split}_{part}": value for split, items in (("train", train), ("test", test))
            for part, value in (("images", np.stack([decode_image(path, SIZE) for path, _ in items])),
                                ("labels", np.asarray([label for _, label in items], dtype=np.int64)))}


SPEC = DatasetSpec("tiny_imagenet", 200, SIZE, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), read, None,
                   "torchvision has no download for it: get http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it, and pass its folder",
                   "Tiny-ImageNet", paper_recipe=dict(epochs=200, lr=0.01, batch_size=128, schedule="cosine"),
                   paper_recipe_note="BackdoorBench steps ReduceLROnPlateau; ours is cosine")
