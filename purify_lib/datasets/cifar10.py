"""CIFAR-10 (Krizhevsky, 2009): 10 classes, 32x32; torchvision's ``cifar-10-batches-py`` pickles.

Normalisation: the mean and standard deviation of its training set (BackdoorBench's constants round the
standard deviation to three places: ``interop.backdoorbench`` folds the difference into the first convolution)."""
from .base import DatasetSpec, cifar_layout, torchvision_download

LAYOUT = cifar_layout("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels")
SPEC = DatasetSpec("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), LAYOUT,
                   torchvision_download("CIFAR10", LAYOUT), "torchvision downloads it (torchvision.datasets.CIFAR10)",
                   "CIFAR-10", paper_recipe=dict(epochs=100, lr=0.01, batch_size=128, schedule="cosine"))
