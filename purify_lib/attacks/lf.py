"""Low-Frequency attack (Zeng et al., ICCV 2021): add a smooth, low-frequency uint8 pattern."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..seeds import stream
from .base import Attack, trigger_pattern


def default_pattern(size: int = 32, amplitude: float = 50, seed: int = 0) -> torch.Tensor:
    """A seeded stand-in: 4x4 noise upsampled bicubically, so only low frequencies remain."""
    coarse = torch.rand(1, 3, 4, 4, generator=stream("lf-pattern", seed))
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * amplitude).round().to(torch.uint8)


class LF(Attack):
    """``x' = clip(x + pattern, 0, 255)`` with BackdoorBench's PreAct-ResNet18 CIFAR-10 pattern."""

    name = "lf"
    published = frozenset({"LF"})

    def __init__(self, *, target: int = 0, trigger_path=None, pool: str = "all"):
        super().__init__(target=target, pool=pool)
        self.pattern = trigger_pattern("cifar10_preactresnet18_0_255.npy", trigger_path, default_pattern)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return (images.int() + self.pattern.to(images.device).int()).clamp(0, 255).to(torch.uint8)
