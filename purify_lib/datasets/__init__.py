"""The datasets, one module each, registered by name in ``DATASETS``.

A module defines one ``DatasetSpec``: its classes, its image size, the normalisation the models apply, how its
usual on-disk layout is read, how torchvision downloads it (where it can), and BackdoorBench's training defaults
for it (``config/attack/prototype/<name>.yaml``), which the ``paper`` profile takes.  ``data.load_dataset`` reads
any of them from that layout, from an ImageFolder tree or zip (``train/<class>/*``, ``test/<class>/*``), or from
the download; images of another size are resized to the dataset's (GTSRB's, as BackdoorBench does).
"""
from __future__ import annotations

from .base import DATASETS, DatasetSpec, get_spec
from . import cifar10, cifar100, gtsrb, tiny_imagenet  # noqa: F401  (each registers itself)

__all__ = ["DATASETS", "DatasetSpec", "get_spec"]
