"""PreAct-ResNet18, ResNet-18 (width as a parameter) and VGG19-BN, each split into ``features`` and ``head``.

Each pools its last feature map by its mean, so all three take any input size: 32x32 (CIFAR, GTSRB) and
64x64 (Tiny-ImageNet), as BackdoorBench's adaptive pooling does.

Every model takes float images in [0, 1] and normalises them itself, so attacks and
defenses work in pixel space.  ``model.features(x)`` gives the penultimate features,
``model.head`` is the final ``nn.Linear``, and ``model(x) == model.head(model.features(x))``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .datasets import DATASETS
from .errors import PurifyError, choose

MEANS = {name: spec.mean for name, spec in DATASETS.items()}  # each dataset's module says where its constants come from
STDS = {name: spec.std for name, spec in DATASETS.items()}
HEAD_NAMES = ("head", "linear", "fc", "classifier")


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = nn.ReLU()  # a module, so activation clipping can follow it
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def resnet_stages(block, width: int) -> list[nn.Sequential]:
    """ResNet-18's four stages of two blocks: ``width`` channels doubling, resolution halving, stage by stage."""
    layers, in_planes = [], width
    for stage, stride in enumerate((1, 2, 2, 2)):
        planes = width * 2**stage
        layers.append(nn.Sequential(block(in_planes, planes, stride), block(planes, planes, 1)))
        in_planes = planes
    return layers


class PreActResNet18(nn.Module):
    """PreAct-ResNet18 as in BackdoorBench (``models/preact_resnet.py``); ``width`` is the first
    stage's channels (64 in the papers).

    As there, ``layer4``'s residual sum goes straight to average pooling, with no BatchNorm and
    ReLU in between: 16 BatchNorm layers, the ones NFT masks and ANP prunes.
    """

    # Where activation clipping (MM-BD, PAD) bounds channels: MM-BD clips the post-ReLU outputs of
    # the stem, layer1 and layer2 of a standard ResNet-18.  Here those stage outputs are residual
    # sums that a BatchNorm (whose scale may be negative, turning an upper bound into a lower one)
    # and a ReLU follow, so the clips go after those ReLUs: the input activations of the first block
    # of layer1, layer2 and layer3.
    clip_points = ("layer1.0.act1", "layer2.0.act1", "layer3.0.act1")
    # Feature maps whose attention NAD distils (BackdoorBench: layer3 and layer4).
    attention_points = ("layer3", "layer4")

    def __init__(self, num_classes=10, width=64, dataset="cifar10"):
        super().__init__()
        self.normalize = Normalize(MEANS[dataset], STDS[dataset])
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet_stages(PreActBlock, width)
        self.head = nn.Linear(width * 8, num_classes)

    def features(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return out.mean((2, 3))  # a mean, not adaptive_avg_pool2d, whose CUDA backward has no deterministic kernel

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 that FST, NFT and MM-BD train (3x3 stem, no max-pool, BatchNorm on the
    projection shortcuts, a ReLU after every block); ``width`` is the first stage's channels (64 there)."""

    clip_points = ("stem", "layer1", "layer2")  # post-ReLU, exactly where MM-BD's univ_bm.py clips
    attention_points = ("layer3", "layer4")

    def __init__(self, num_classes=10, width=64, dataset="cifar10"):
        super().__init__()
        self.normalize = Normalize(MEANS[dataset], STDS[dataset])
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet_stages(BasicBlock, width)
        self.head = nn.Linear(width * 8, num_classes)

    def features(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(self.normalize(x))))))
        return out.mean((2, 3))  # a mean, not adaptive_avg_pool2d, whose CUDA backward has no deterministic kernel

    def forward(self, x):
        return self.head(self.features(x))


VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG19BN(nn.Module):
    """VGG19 with batch norm (the CIFAR variant: one linear layer after the last max-pool); channel counts scaled by
    ``width / 64``.  The last max-pool's map is averaged (1x1 at 32x32 inputs, where that is the flatten of the
    CIFAR variant; 2x2 at Tiny-ImageNet's 64x64)."""

    clip_points = ("body.6", "body.13", "body.26")  # the first three max-pools
    attention_points = ("body.39", "body.52")  # the last two

    def __init__(self, num_classes=10, width=64, dataset="cifar10"):
        super().__init__()
        self.normalize = Normalize(MEANS[dataset], STDS[dataset])
        layers, in_channels = [], 3
        for item in VGG19_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out_channels = item * width // 64
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
                in_channels = out_channels
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, num_classes)

    def features(self, x):
        return self.body(self.normalize(x)).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


MODELS = {"preactresnet18": PreActResNet18, "resnet18": ResNet18, "vgg19bn": VGG19BN}


def make_model(name: str, num_classes: int = 10, width: int = 64, dataset: str = "cifar10") -> nn.Module:
    cls = MODELS[choose("model", name, MODELS)]
    if width < 1:
        raise PurifyError(f"width={width} must be a positive number of channels")
    choose("dataset", dataset, MEANS)
    return cls(num_classes=num_classes, width=width, dataset=dataset)


def get_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The final linear classifier of ``model``; errors naming the attributes it looked for."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Linear):
            return name, module
    raise PurifyError(f"{type(model).__name__} has no linear head; looked for attributes {', '.join(HEAD_NAMES)}")
