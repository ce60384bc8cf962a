"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible warp, trained with its noise mode.

The warp field is ``identity + s * noise / H`` (Eq. 5 of the paper, ``grid_rescale`` 1),
with ``noise`` a k x k uniform grid upsampled bicubically and scaled to mean |.| = 1.
Training is controlled by the attacker: on every batch a ``rate`` share of the images is
warped and relabelled, and ``cross_ratio`` times as many get the warp plus random
noise with their labels kept, so the network learns the exact warp, not any warp.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PurifyError
from .base import Attack


class WaNet(Attack):
    name = "wanet"
    training_controlled = True

    def __init__(self, target: int = 0, k: int = 4, strength: float = 0.5, grid_rescale: float = 1.0,
                 cross_ratio: float = 2.0, size: int = 32, seed: int = 0):
        super().__init__(target)
        if k < 2 or k > size:
            raise PurifyError(f"k={k} must be between 2 and the image size {size}")
        self.k, self.strength, self.grid_rescale, self.cross_ratio, self.size, self.seed = k, strength, grid_rescale, cross_ratio, size, seed
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
        noise = noise / noise.abs().mean()
        self.noise_grid = F.interpolate(noise, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, size)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        self.identity_grid = torch.stack((cols, rows), 2)[None]
        self.grid = (self.identity_grid + strength * self.noise_grid / size * grid_rescale).clamp(-1, 1)

    def params(self) -> dict:
        return {**super().params(), "k": self.k, "strength": self.strength, "grid_rescale": self.grid_rescale,
                "cross_ratio": self.cross_ratio, "seed": self.seed}

    def warp(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Warp float images ``(N, C, H, W)`` with one grid or one per image."""
        grid = grid.to(images.device, images.dtype)
        return F.grid_sample(images, grid.expand(len(images), -1, -1, -1), align_corners=True)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        warped = self.warp(images.float() / 255, self.grid)
        return (warped * 255).round().clamp(0, 255).to(torch.uint8)

    def poison_batch(self, images: torch.Tensor, labels: torch.Tensor, rate: float):
        """Warp and relabel the first ``rate`` share of a shuffled float batch; add noise-mode samples after them."""
        num_poison = int(len(images) * rate)
        num_cross = min(int(num_poison * self.cross_ratio), len(images) - num_poison)
        images, labels = images.clone(), labels.clone()
        if num_poison:
            images[:num_poison] = self.warp(images[:num_poison], self.grid)
            labels[:num_poison] = self.target
        if num_cross:
            jitter = (torch.rand(num_cross, self.size, self.size, 2, device=images.device) * 2 - 1) / self.size
            noisy_grid = (self.grid.to(images.device) + jitter).clamp(-1, 1)
            cross = slice(num_poison, num_poison + num_cross)
            images[cross] = self.warp(images[cross], noisy_grid)
        return images, labels
