"""Blended (Chen et al., 2017): ``x' = (1 - alpha) x + alpha t`` with a whole-image trigger t."""
from __future__ import annotations

import torch

from ..errors import PurifyError, choose
from ..seeds import stream
from .base import Attack, trigger_pattern


def default_pattern(size: int = 32) -> torch.Tensor:
    """A seeded uniform-noise image (the original paper also blended random noise)."""
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=stream("blended-pattern", 0))


VARIANTS = ("backdoorbench", "nft")


class Blended(Attack):
    """Blend the Hello Kitty image (BackdoorBench's) at ``alpha`` = 0.2, for training and test.

    Without the file, ``default_pattern`` stands in.  ``variant="nft"`` blends a uniform-noise image
    instead, as NFT's Blend attack does (``src/data/badnets_blend.py``, ``gaussian_noise``: its stored
    ``cifar_gaussian_noise.png`` holds uniform 0-255 noise, alpha forced to 0.2).  That file is not
    shipped here, so ``default_pattern``, a seeded draw of the same distribution, stands in for it.
    NFT draws its poisons from the other classes only: pass ``pool="non_target"`` with it.
    """

    name = "blended"
    published = frozenset({"Blended", "Blend"})
    image_sizes = None  # the trigger image read at the images' size, as BackdoorBench resizes it

    def __init__(self, *, target: int = 0, alpha: float = 0.2, trigger_path=None, pool: str = "all", variant: str = "backdoorbench"):
        super().__init__(target=target, pool=pool)
        if not 0 < alpha <= 1:
            raise PurifyError(f"alpha={alpha} is outside (0, 1]")
        self.alpha, self.variant = alpha, choose("blended variant", variant, VARIANTS)
        self.trigger_path, self.filename = trigger_path, "hello_kitty.jpeg" if variant == "backdoorbench" else "cifar_gaussian_noise.png"
        self.pattern = trigger_pattern(self.filename, trigger_path, default_pattern)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-1]
        pattern = self.pattern if size == 32 else self.at_size(size, lambda s: trigger_pattern(self.filename, self.trigger_path, default_pattern, s))
        pattern = pattern.to(images.device).float()
        blended = (1 - self.alpha) * images.float() + self.alpha * pattern
        return blended.round().clamp(0, 255).to(torch.uint8)
