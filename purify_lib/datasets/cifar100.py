"""CIFAR-100 (Krizhevsky, 2009): 100 fine classes, 32x32; torchvision's ``cifar-100-python`` pickles (``fine_labels``).

Normalisation and recipe: BackdoorBench's (``get_dataset_normalization``; ``config/attack/prototype/cifar100.yaml``:
100 epochs, lr 0.01, batch 128, cosine)."""
from .base import DatasetSpec, cifar_layout, torchvision_download

LAYOUT = cifar_layout("cifar-100-python", ["train"], "test", "fine_labels")
SPEC = DatasetSpec("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), LAYOUT,
                   torchvision_download("CIFAR100", LAYOUT), "torchvision downloads it (torchvision.datasets.CIFAR100)",
                   "CIFAR-100", paper_recipe=dict(epochs=100, lr=0.01, batch_size=128, schedule="cosine"))
