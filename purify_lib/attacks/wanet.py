"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible warp, trained with its noise mode.

The warp field is ``identity + s * noise / H`` (Eq. 5 of the paper, ``grid_rescale`` 1),
with ``noise`` a k x k uniform grid upsampled bicubically and scaled to mean |.| = 1.
Training is controlled by the attacker: on every batch a ``rate`` share of the images is
warped and relabelled, and ``cross_ratio`` times as many get the warp plus random
noise with their labels kept, so the network learns the exact warp, not any warp.

As in BackdoorBench's ``attack/wanet.py`` (defaults k 4, s 0.5, cross_ratio 2, from its
``config/attack/wanet/default.yaml``):

- the warp is applied to the un-augmented image, and then the whole batch goes through
  WaNet's own augmentation (``post_augment``: random crop with padding 5 at p 0.8, rotation
  within +-10 degrees at p 0.5, horizontal flip), which replaces the recipe's crop and flip.
  BackdoorBench's torchvision transforms draw one crop, angle and flip per *batch*; the
  original WaNet code (kornia) draws them per sample, as we do.  ``post_augment=False`` gives
  the recipe's crop and flip before the warp instead, so the warp always lands pixel-aligned.
- the poison count per batch has mean ``rate x batch``: its integer part always, plus one
  more with probability equal to the fraction.  BackdoorBench truncates above one poison per
  batch (0.1 x 128 = 12.8 gives 12) and draws 0 or 1 below it (``generalize_to_lower_pratio``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import augment
from ..errors import PurifyError
from ..seeds import stream
from .base import Attack


class WaNet(Attack):
    name = "wanet"
    published = frozenset({"WaNet"})
    training_controlled = True
    image_sizes = None  # the grid is made at ``size``, which the zoo sets to the images' size

    def __init__(self, *, target: int = 0, k: int = 4, strength: float = 0.5, grid_rescale: float = 1.0,
                 cross_ratio: float = 2.0, size: int = 32, seed: int = 0, post_augment: bool = True):
        super().__init__(target=target)
        self.post_augment = self.augments_after_poison = bool(post_augment)
        if k < 2 or k > size:
            raise PurifyError(f"k={k} must be between 2 and the image size {size}")
        self.k, self.strength, self.grid_rescale, self.cross_ratio, self.size, self.seed = k, strength, grid_rescale, cross_ratio, size, seed
        noise = torch.rand(1, 2, k, k, generator=stream("wanet-grid", seed)) * 2 - 1
        noise = noise / noise.abs().mean()
        self.noise_grid = F.interpolate(noise, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, size)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        self.identity_grid = torch.stack((cols, rows), 2)[None]
        self.grid = (self.identity_grid + strength * self.noise_grid / size * grid_rescale).clamp(-1, 1)
        self._grids = {}  # the grid per (device, dtype) it was needed on

    def grid_on(self, device, dtype) -> torch.Tensor:
        """The warping grid on ``device``, copied there once, not every batch."""
        key = (str(device), dtype)
        if key not in self._grids:
            self._grids[key] = self.grid.to(device, dtype)
        return self._grids[key]

    def warp(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Warp float images ``(N, C, H, W)`` with one grid or one per image."""
        grid = grid.to(images.device, images.dtype)
        return F.grid_sample(images, grid.expand(len(images), -1, -1, -1), align_corners=True)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        warped = self.warp(images.float() / 255, self.grid)
        return (warped * 255).round().clamp(0, 255).to(torch.uint8)

    def poison_batch(self, images: torch.Tensor, labels: torch.Tensor, rate: float):
        """Warp and relabel the first ``rate`` share of a shuffled float batch (on average); add noise-mode samples after them."""
        expected = len(images) * rate
        num_poison = int(expected) + int(torch.rand(()) < expected - int(expected))
        num_cross = min(int(num_poison * self.cross_ratio), len(images) - num_poison)
        images, labels = images.clone(), labels.clone()
        if num_poison:
            images[:num_poison] = self.warp(images[:num_poison], self.grid_on(images.device, images.dtype))
            labels[:num_poison] = self.target
        if num_cross:
            jitter = (torch.rand(num_cross, self.size, self.size, 2, device=images.device) * 2 - 1) / self.size
            noisy_grid = (self.grid_on(images.device, jitter.dtype) + jitter).clamp(-1, 1)
            cross = slice(num_poison, num_poison + num_cross)
            images[cross] = self.warp(images[cross], noisy_grid)
        return images, labels

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """WaNet's post-poisoning augmentation of a float batch, drawn per sample (see the module docstring)."""
        n, device = len(images), images.device
        cropped = augment(images, padding=5, flip=False)
        images = torch.where((torch.rand(n, device=device) < 0.8)[:, None, None, None], cropped, images)
        # every image gets an angle and half are rotated, chosen with a mask rather than by index (no wait for the GPU)
        rotate = torch.rand(n, device=device) < 0.5
        angle = torch.deg2rad((torch.rand(n, device=device) * 2 - 1) * 10)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, [n, *images.shape[1:]], align_corners=False)
        # nearest and zero fill: torchvision RandomRotation's defaults
        rotated = F.grid_sample(images, grid.to(images.dtype), mode="nearest", align_corners=False)
        images = torch.where(rotate[:, None, None, None], rotated, images)
        return augment(images, padding=0, flip=True)
