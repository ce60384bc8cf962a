"""Low-Frequency attack (Zeng et al., ICCV 2021): add a smooth, low-frequency uint8 pattern."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..seeds import stream
from .base import Attack, load_pattern, trigger_pattern


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
    # BackdoorBench optimises one pattern per dataset and model and ships them as .npy files, never resized: at
    # another size pass trigger_path= that size's file (without one, the seeded stand-in is made at that size).
    image_sizes = None

    def __init__(self, *, target: int = 0, trigger_path=None, pool: str = "all"):
        super().__init__(target=target, pool=pool)
        self.trigger_path = trigger_path
        self.pattern = trigger_pattern("cifar10_preactresnet18_0_255.npy", trigger_path, default_pattern)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-1]
        pattern = self.pattern if size == 32 else self.at_size(size, self.pattern_for)
        return (images.int() + pattern.to(images.device).int()).clamp(0, 255).to(torch.uint8)

    def pattern_for(self, size: int) -> torch.Tensor:
        """The pattern for ``size`` x ``size`` images: ``trigger_path`` (which must be that size), else the seeded stand-in;
        the CIFAR-10 file found by name is not used at another size (BackdoorBench's is optimised for 32x32 CIFAR-10)."""
        return torch.from_numpy(load_pattern(Path(self.trigger_path), size)) if self.trigger_path else default_pattern(size)
