"""Input-aware dynamic backdoor, IAD (Nguyen & Tran, NeurIPS 2020; "Dynamic" in NFT's tables).

Every image gets its own trigger: a generator ``G`` makes a pattern from the image and a mask
generator ``M`` says where it goes, ``x' = x + (G(x) - x) * M(x)``.  Training is controlled by the
attacker, like WaNet's: on every batch a ``rate`` share of images gets its own trigger and the
target label; as many again (``cross_ratio`` 1) get *another* image's trigger and keep their
labels (cross-trigger mode), so a trigger works only on the image it was made for; and a
diversity term ``||x1 - x2|| / ||G(x1) - G(x2)||`` (Eq. 4, weight ``lambda_div`` 1) keeps
different images from getting the same pattern.  ``G`` learns with the classifier (one backward
pass through both; ``G`` takes its Adam step after the classifier's).  Before that, ``M`` is
trained alone for ``mask_epochs`` with ``lambda_norm * mean(relu(M(x) - mask_density))`` plus the
same diversity term on masks, and then frozen.

Defaults follow BackdoorBench's ``attack/inputaware.py`` (the official code's port) and its
config: both generators are the 3-step conv encoder-decoder with ``channels`` = 32 at the start,
BatchNorm momentum 0.05, output ``tanh / 2 + 0.5``; the mask is sharpened by ``tanh(20 m - 10)``;
Adam lr 0.01 betas (0.5, 0.9) for both (its step milestones lie beyond BackdoorBench's epochs, so
the rates stay constant); ``mask_density`` 0.032, ``lambda_norm`` 100, ``mask_epochs`` 25.  Here
the generators see pixels in [0, 1] (BackdoorBench normalises first; their BatchNorm makes
the two nearly the same), the cross-trigger images are the batch's own images shifted by one
(BackdoorBench draws a second batch), and ``G``'s gradients are cleared after each step
(BackdoorBench never clears them, so they accumulate).  The trained generators are learned
state: the zoo stores them beside the victim.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..data import ImageSet, to_float
from ..errors import PurifyError
from ..seeds import seed_global, stream
from .base import Attack, map_in_batches


def _conv(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05), *([nn.ReLU()] if relu else [])]


class Generator(nn.Module):
    """IAD's encoder-decoder: three conv-conv-pool steps down from 32 channels, a middle block, three up."""

    def __init__(self, out_channels: int = 3, channels: int = 32):
        super().__init__()
        down, cin = [], 3
        for step in range(3):
            c = channels * 2**step
            down += [*_conv(cin, c), *_conv(c, c), nn.MaxPool2d(2)]
            cin = c
        up = _conv(cin, cin)
        for step in reversed(range(3)):
            c = channels * 2**step
            last = step == 0
            up += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv(cin, cin),
                   *_conv(cin, out_channels if last else c // 2, relu=not last)]
            cin = c // 2
        self.net = nn.Sequential(*down, *up)

    def forward(self, x):
        return torch.tanh(self.net(x)) / (2 + 1e-7) + 0.5


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The 1e-12 keeps the gradient finite where two outputs are identical (saturated masks, say):
    # sqrt's derivative at 0 is infinite, and times the zero difference it makes NaN weights.
    return (a - b).pow(2).flatten(1).mean(1).add(1e-12).sqrt()


def diversity(x1, x2, out1, out2) -> torch.Tensor:
    """IAD's diversity loss: input distance over output distance, averaged over the pairs."""
    return (_rms(x1, x2) / (_rms(out1, out2) + 1e-7)).mean()


class IAD(Attack):
    name = "iad"
    published = frozenset({"Input-aware", "Dyn-one"})
    budgets = {
        "smoke": ({"channels": 4, "mask_epochs": 1}, "seconds on the smoke victims, for CI"),
        # at 32 channels the generators cost about four times the width-16 victim per image, and the mask
        # generator's 25 epochs alone would take longer than the victim
        "cpu": ({"channels": 8, "mask_epochs": 1}, "8 channels (about a quarter of the victim per image) and 1 mask epoch"),
    }
    training_controlled = True

    def __init__(self, *, target: int = 0, cross_ratio: float = 1.0, lambda_div: float = 1.0, lambda_norm: float = 100.0,
                 mask_density: float = 0.032, mask_epochs: int = 25, lr: float = 0.01, batch_size: int = 128, channels: int = 32, seed: int = 0):
        super().__init__(target=target)
        if mask_epochs < 0 or cross_ratio < 0 or channels < 1 or not 0 < mask_density < 1:
            raise PurifyError(f"iad needs mask_epochs >= 0, cross_ratio >= 0, channels >= 1 and mask_density in (0, 1); "
                              f"got {mask_epochs}, {cross_ratio}, {channels}, {mask_density}")
        self.cross_ratio, self.lambda_div, self.lambda_norm, self.mask_density = cross_ratio, lambda_div, lambda_norm, mask_density
        self.mask_epochs, self.lr, self.batch_size, self.channels, self.seed = mask_epochs, lr, batch_size, channels, seed
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, without touching the caller's random state
            seed_global("iad-init", seed)
            self.generator, self.mask_generator = Generator(3, channels), Generator(1, channels)
        # one module for the learned state: its state dict names them "generator." and "mask."
        self.nets = nn.ModuleDict({"generator": self.generator, "mask": self.mask_generator})
        self.optimizer, self.pending_loss = None, None

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(20 * self.mask_generator(x) - 10) / (2 + 1e-7) + 0.5

    def stamp(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` with the trigger made from ``source`` (default: ``x`` itself)."""
        source = x if source is None else source
        return x + (self.generator(source) - x) * self.mask(source)

    def prepare(self, train: ImageSet, device) -> None:
        """Train the mask generator alone (norm and diversity terms), then freeze it."""
        if torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled():
            # the generators' bilinear upsampling has no deterministic CUDA backward: warn there rather than stop
            warnings.warn("iad: deterministic mode switched to warn_only for this process (bilinear upsampling's CUDA "
                          "backward has no deterministic kernel)", stacklevel=2)
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.generator.to(device)
        self.mask_generator.to(device).train()
        optimizer = torch.optim.Adam(self.mask_generator.parameters(), lr=self.lr, betas=(0.5, 0.9))
        generator = stream("iad-mask-order", self.seed, device=device)
        images = train.images.to(device)  # once, so no step copies from the host
        for _ in range(self.mask_epochs):
            order = torch.randperm(len(images), generator=generator, device=device)
            second = torch.randperm(len(images), generator=generator, device=device)
            for start in range(0, len(images) - self.batch_size + 1, self.batch_size):
                x1 = to_float(images[order[start : start + self.batch_size]])
                x2 = to_float(images[second[start : start + self.batch_size]])
                m1, m2 = self.mask(x1), self.mask(x2)
                loss = self.lambda_norm * torch.relu(m1 - self.mask_density).mean() + self.lambda_div * diversity(x1, x2, m1, m2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.mask_generator.eval().requires_grad_(False)
        self.generator.train()
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.5, 0.9))

    def poison_batch(self, images: torch.Tensor, labels: torch.Tensor, rate: float):
        """Own-trigger poisons (target label), then cross-trigger images (true labels), then clean ones; the
        diversity term's gradient goes to ``G`` here, the classifier's through the returned images."""
        if self.optimizer is None:
            raise PurifyError("iad trains its generators with the victim: call attack.prepare(train, device) first (the zoo does)")
        expected = len(images) * rate
        num_poison = int(expected) + int(torch.rand(()) < expected - int(expected))
        num_cross = min(int(num_poison * self.cross_ratio), len(images) - num_poison)
        self.generator.train()
        parts, labels = [], labels.clone()
        if num_poison:
            x1, x2 = images[:num_poison], images.roll(1, 0)[:num_poison]
            patterns = self.generator(torch.cat([x1, x2]))
            self.pending_loss = self.lambda_div * diversity(x1, x2, patterns[:num_poison], patterns[num_poison:])
            parts.append(x1 + (patterns[:num_poison] - x1) * self.mask(x1))
            labels[:num_poison] = self.target
        if num_cross:
            cross = slice(num_poison, num_poison + num_cross)
            parts.append(self.stamp(images[cross], images.roll(1, 0)[cross]))
        parts.append(images[num_poison + num_cross :])
        return torch.cat(parts), labels

    def extra_loss(self):
        """The diversity term of the batch just poisoned (its gradient reaches only ``G``), once."""
        loss, self.pending_loss = self.pending_loss, None
        return loss

    def after_step(self, scaler=None) -> None:
        if scaler is not None:
            scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        self.nets.eval()
        return map_in_batches(self.stamp, images, next(self.nets.parameters()).device)

    def state_dict(self) -> dict:
        return self.nets.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_state_dict(state)
        self.nets.eval()
