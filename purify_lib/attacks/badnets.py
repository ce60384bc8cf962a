"""BadNets (Gu et al., 2017): stamp a small patch in the bottom-right corner.

Two trigger sets, as ``variant``:

- ``"backdoorbench"`` (default): a 3x3 white square at rows/cols 29-31, pasted (BackdoorBench's
  ``resource/badnet/trigger_image.png``).
- ``"nft"``: NFT's ``checkerboard_1corner`` (``src/data/badnets_blend.py``): one grey-level 3x3 pattern,
  rows ``(0, 0, 255), (0, 255, 0), (255, 0, 255)``, at rows/cols 29-31 of every channel, blended into those
  nine pixels at alpha 0.6 (its scripts force 0.6 for BadNets).  NFT draws its poisons from the other
  classes only: pass ``pool="non_target"`` with it.
"""
from __future__ import annotations

import torch

from ..errors import choose
from .base import Attack, trigger_pattern

VARIANTS = ("backdoorbench", "nft")
NFT_ALPHA = 0.6


def default_patch(size: int = 32) -> torch.Tensor:
    """BackdoorBench's CIFAR-10 trigger: a 3x3 white square in the bottom-right corner."""
    pattern = torch.zeros(3, size, size, dtype=torch.uint8)
    pattern[:, size - 3 :, size - 3 :] = 255
    return pattern


def nft_checkerboard(size: int = 32) -> torch.Tensor:
    """NFT's corner pattern: the same 3x3 grey levels in every channel, zero elsewhere."""
    pattern = torch.zeros(3, size, size, dtype=torch.uint8)
    pattern[:, size - 3 :, size - 3 :] = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    return pattern


class BadNets(Attack):
    """Pixels where the trigger image is non-zero replace the image's pixels (``"nft"``: the nine corner
    pixels are blended with the pattern at alpha 0.6, black ones included)."""

    name = "badnets"
    published = frozenset({"BadNet", "BadNets", "Badnets"})
    image_sizes = None  # the trigger image resized to the images' size, as BackdoorBench does (NFT's corner: 3x3 at any size)

    def __init__(self, *, target: int = 0, trigger_path=None, pool: str = "all", variant: str = "backdoorbench"):
        super().__init__(target=target, pool=pool)
        self.variant = choose("badnets variant", variant, VARIANTS)
        self.trigger_path = trigger_path
        self.pattern, self.mask = self.trigger(32)

    def trigger(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pattern and the mask of the pixels it replaces, for ``size`` x ``size`` images."""
        if self.variant == "nft":
            pattern = nft_checkerboard(size) if self.trigger_path is None else trigger_pattern("", self.trigger_path, nft_checkerboard, size)
            mask = torch.zeros(1, size, size, dtype=torch.bool)
            mask[:, -3:, -3:] = True
            return pattern, mask
        pattern = trigger_pattern("trigger_image.png", self.trigger_path, default_patch, size)
        return pattern, (pattern > 0).any(0, keepdim=True)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        pattern, mask = (self.pattern, self.mask) if images.shape[-1] == 32 else self.at_size(images.shape[-1], self.trigger)
        mask, pattern = mask.to(images.device), pattern.to(images.device)
        if self.variant == "nft":
            pattern = ((1 - NFT_ALPHA) * images.float() + NFT_ALPHA * pattern.float()).round().clamp(0, 255).to(torch.uint8)
        return torch.where(mask, pattern, images)
