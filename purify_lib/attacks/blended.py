"""Blended (Chen et al., 2017): ``x' = (1 - alpha) x + alpha t`` with a whole-image trigger t."""
from __future__ import annotations

import torch

from ..errors import PurifyError
from .base import Attack, pattern_digest, trigger_pattern


def default_pattern() -> torch.Tensor:
    """A seeded uniform-noise image (the original paper also blended random noise)."""
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class Blended(Attack):
    """Blend the Hello Kitty image (BackdoorBench's) at ``alpha`` = 0.2, for training and test.

    Without the file, ``default_pattern`` stands in.
    """

    name = "blended"

    def __init__(self, target: int = 0, alpha: float = 0.2, trigger_path=None, pool: str = "all"):
        super().__init__(target, pool)
        if not 0 < alpha <= 1:
            raise PurifyError(f"alpha={alpha} is outside (0, 1]")
        self.alpha = alpha
        self.pattern = trigger_pattern("hello_kitty.jpeg", trigger_path, default_pattern)

    def params(self) -> dict:
        return {**super().params(), "alpha": self.alpha, "trigger": pattern_digest(self.pattern)}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern.to(images.device).float()
        blended = (1 - self.alpha) * images.float() + self.alpha * pattern
        return blended.round().clamp(0, 255).to(torch.uint8)
