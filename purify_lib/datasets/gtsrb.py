"""GTSRB (Stallkamp et al., 2012): 43 traffic-sign classes, resized to 32x32 as BackdoorBench does.

torchvision's layout: ``gtsrb/GTSRB/Training/<00000..00042>/*.ppm`` (the class from the folder) and
``gtsrb/GTSRB/Final_Test/Images/*.ppm`` with their classes in ``gtsrb/GT-final_test.csv`` (``;``-separated,
``Filename`` and ``ClassId``).  Normalisation: none, as BackdoorBench's (mean 0, std 1).  Recipe: its
``config/attack/prototype/gtsrb.yaml``, 50 epochs at lr 0.01, batch 128, cosine; BackdoorBench's cosine keeps
``T_max`` 100, so its rate ends at half the start, where ours anneals to zero over the 50 epochs."""
import csv
from pathlib import Path

import numpy as np

from .base import DatasetSpec, decode_image, torchvision_download

SIZE = 32


def read(root: Path) -> dict | None:
    base = root / "gtsrb" if (root / "gtsrb").is_dir() else root
    training, test_images, test_csv = base / "GTSRB" / "Training", base / "GTSRB" / "Final_Test" / "Images", base / "GT-final_test.csv"
    if not (training.is_dir() and test_images.is_dir() and test_csv.is_file()):
        return None
    classes = sorted(p.name for p in training.iterdir() if p.is_dir())
    train = [(path, label) for label, name in enumerate(classes) for path in sorted((training / name).glob("*.ppm"))]
    with open(test_csv, newline="") as handle:
        test = [(test_images / row["Filename"], int(row["ClassId"])) for row in csv.DictReader(handle, delimiter=";", skipinitialspace=True)]
    return {f"{split}_{part}": value for split, items in (("train", train), ("test", test))
            for part, value in (("images", np.stack([decode_image(path, SIZE) for path, _ in items])),
                                ("labels", np.asarray([label for _, label in items], dtype=np.int64)))}


SPEC = DatasetSpec("gtsrb", 43, SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), read, torchvision_download("GTSRB", read),
                   "torchvision downloads it (torchvision.datasets.GTSRB)",
                   "GTSRB", paper_recipe=dict(epochs=50, lr=0.01, batch_size=128, schedule="cosine"),
                   paper_recipe_note="BackdoorBench's cosine has T_max 100 over its 50 epochs (ending at half the rate); ours anneals to zero")
