"""BadNets (Gu et al., 2017): paste a small patch; here a 3x3 white square at rows/cols 29-31."""
from __future__ import annotations

import torch

from .base import Attack, pattern_digest, trigger_pattern


def default_patch(size: int = 32) -> torch.Tensor:
    """BackdoorBench's CIFAR-10 trigger: a 3x3 white square in the bottom-right corner."""
    pattern = torch.zeros(3, size, size, dtype=torch.uint8)
    pattern[:, size - 3 :, size - 3 :] = 255
    return pattern


class BadNets(Attack):
    """Pixels where the trigger image is non-zero replace the image's pixels."""

    name = "badnets"

    def __init__(self, target: int = 0, trigger_path=None, pool: str = "all"):
        super().__init__(target, pool)
        self.pattern = trigger_pattern("trigger_image.png", trigger_path, default_patch)
        self.mask = (self.pattern > 0).any(0, keepdim=True)

    def params(self) -> dict:
        return {**super().params(), "trigger": pattern_digest(self.pattern)}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        mask, pattern = self.mask.to(images.device), self.pattern.to(images.device)
        return torch.where(mask, pattern, images)
