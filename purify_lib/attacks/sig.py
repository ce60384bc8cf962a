"""SIG (Barni et al., 2019): clean-label; add a horizontal sinusoid ``delta * sin(2 pi j f / m)``."""
from __future__ import annotations

import math

import torch

from .base import Attack


class SIG(Attack):
    """Poisons target-class training images only (labels untouched); delta 40, f 6."""

    name = "sig"
    published = frozenset({"SIG"})
    clean_label = True
    image_sizes = None  # f cycles across the image's width, whatever the width (BackdoorBench's sigTriggerAttack)

    def __init__(self, *, target: int = 0, delta: float = 40, frequency: float = 6):
        super().__init__(target=target)
        self.delta, self.frequency = delta, frequency

    def pattern(self, width: int, device) -> torch.Tensor:
        columns = torch.arange(width, device=device, dtype=torch.float32)
        return self.delta * torch.sin(2 * math.pi * columns * self.frequency / width)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        wave = self.pattern(images.shape[-1], images.device)
        return (images.float() + wave).clamp(0, 255).round().to(torch.uint8)
