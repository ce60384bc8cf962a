"""Adaptive-Blend (Qi et al., "Revisiting the assumption of latent separability for backdoor
defenses", ICLR 2023): a low-opacity blend, split into pieces, with conservative cover samples.

The trigger image (BackdoorBench's Hello Kitty, as for Blended) is cut into a 4 x 4 grid of
``pieces`` = 16 patches.  Each training poison blends, at the training opacity ``alpha`` = 0.15,
only a random half of the patches (``masked_pieces`` = 8 left out, drawn per image), and is
relabelled to the target.  ``cover_ratio`` times as many *cover* samples get the same kind of
partial trigger but keep their true labels: the conservatism that keeps poisons and clean images
close in the latent space, so that defenses which separate them fail.  Test images get the whole
trigger at the higher ``test_alpha`` = 0.2.  Defaults are the official code's (backdoor-toolbox,
``poison_tool_box/adaptive_blend.py`` and its CIFAR-10 config: alpha 0.15 train, 0.2 test,
16 pieces, mask rate 0.5, poison and cover rates both 0.003, hence ``cover_ratio`` 1).
Only the relabelled poisons are marked as poisoned; covers are correctly labelled data.
"""
from __future__ import annotations

import torch

from ..data import ImageSet
from ..errors import PurifyError
from ..seeds import stream
from .base import Poisoned
from .blended import Blended


class AdaptiveBlend(Blended):
    name = "adaptive_blend"
    image_sizes = (32,)  # its pieces and covers are laid out for 32x32 here
    published = frozenset({"Adaptive-Blend"})

    def __init__(self, *, target: int = 0, alpha: float = 0.15, test_alpha: float = 0.2, pieces: int = 16,
                 masked_pieces: int = 8, cover_ratio: float = 1.0, trigger_path=None, pool: str = "all"):
        super().__init__(target=target, alpha=test_alpha, trigger_path=trigger_path, pool=pool)
        side = round(pieces**0.5)
        if side * side != pieces or 32 % side:
            raise PurifyError(f"pieces={pieces} must be a square grid that divides 32 (4, 16, 64, ...)")
        if not 0 <= masked_pieces < pieces:
            raise PurifyError(f"masked_pieces={masked_pieces} must be in [0, {pieces})")
        if not 0 < alpha <= 1:
            raise PurifyError(f"alpha={alpha} is outside (0, 1]")
        if cover_ratio < 0:
            raise PurifyError(f"cover_ratio={cover_ratio} must be >= 0")
        self.train_alpha, self.test_alpha = alpha, test_alpha
        self.pieces, self.masked_pieces, self.cover_ratio = pieces, masked_pieces, cover_ratio

    def key_value(self, field: str) -> tuple[str, object]:
        # ``alpha`` is the training poisons' blend here; Blended's ``self.alpha`` holds the test one
        return ("alpha", self.train_alpha) if field == "alpha" else super().key_value(field)

    def piece_masks(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` boolean masks ``(count, 1, 32, 32)``, each covering ``pieces - masked_pieces`` random patches."""
        side = round(self.pieces**0.5)
        keep = torch.rand(count, self.pieces, generator=generator).argsort(1) >= self.masked_pieces
        grid = keep.view(count, 1, side, side).float()
        return torch.nn.functional.interpolate(grid, scale_factor=32 // side, mode="nearest").bool()

    def partial(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training-time trigger: ``alpha`` blend on a random half of the pieces of each image."""
        mask = self.piece_masks(len(images), generator)
        blended = (1 - self.train_alpha) * images.float() + self.train_alpha * self.pattern.float()
        return torch.where(mask, blended.round().clamp(0, 255), images.float()).to(torch.uint8)

    def poison(self, train: ImageSet, rate: float, seed: int = 0) -> Poisoned:
        count = self.poison_count(train.labels, rate)
        covers = round(count * self.cover_ratio)
        if count + covers > len(train.labels):
            raise PurifyError(f"poison_rate={rate} with cover_ratio={self.cover_ratio} needs {count + covers} images; the set holds {len(train.labels)}")
        index = self.choose(train.labels, rate, seed)  # the poisons as every attack draws them
        rest = torch.ones(len(train.labels), dtype=torch.bool)
        rest[index] = False
        rest = torch.nonzero(rest).squeeze(1)
        cover = rest[torch.randperm(len(rest), generator=stream("adaptive-blend-covers", seed))[:covers]].sort().values
        generator = stream("adaptive-blend-pieces", seed)
        images, labels = train.images.clone(), train.labels.clone()
        images[index] = self.partial(images[index], generator)
        images[cover] = self.partial(images[cover], generator)
        labels[index] = self.target
        return Poisoned(ImageSet(images, labels, train.indices), index)
