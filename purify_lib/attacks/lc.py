"""Label-consistent attack (Turner, Tsipras & Madry, 2019): clean-label, adversarially hardened poisons.

Target-class training images are first pushed away from their own class by an L-infinity PGD
attack on an adversarially trained model, so the network cannot classify them from their
content and leans on the trigger; then the trigger is pasted.  Labels are untouched; test
images get the trigger only.

Defaults follow BackdoorBench's LC: PGD eps 8/255, 100 steps of 1.5/255, against an
adversarially trained model (eps 8/255), and a 3x3 checkerboard in all four corners, which a
horizontal flip leaves in place.  BackdoorBench ships the poisons its authors generated; here
the zoo trains the adversarial model once (``model_eps``; FGSM from a random start, Wong et
al. 2020, where the LC authors used PGD adversarial training: about 2x a clean model's cost
instead of 8x) and crafts the poisons against it.  ``model_eps=0`` crafts against a plain clean
model instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PurifyError
from .badnets import BadNets


def four_corner_checkerboard(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 checkerboard (white on the corners and centre) in each corner of the image, and the
    mask of those four squares (black squares included, so they too replace the image)."""
    board = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    pattern = torch.zeros(3, size, size, dtype=torch.uint8)
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    for rows in (slice(0, 3), slice(size - 3, size)):
        for cols in (slice(0, 3), slice(size - 3, size)):
            pattern[:, rows, cols] = board
            mask[:, rows, cols] = True
    return pattern, mask


class LC(BadNets):
    name = "lc"
    image_sizes = (32,)  # its corner patches and perturbations are made for 32x32 here
    published = frozenset({"LC", "CLB"})
    clean_label = True
    needs_clean_model = True

    def __init__(self, *, target: int = 0, eps: float = 8 / 255, steps: int = 100, step_size: float = 1.5 / 255,
                 model_eps: float = 8 / 255, trigger_path=None):
        super().__init__(target=target, trigger_path=trigger_path)
        if trigger_path is None:  # BackdoorBench's four-corner checkerboard; the whole 3x3 squares replace the image
            self.pattern, self.mask = four_corner_checkerboard()
        if model_eps < 0:
            raise PurifyError(f"model_eps={model_eps} must be >= 0 (0: a clean model that was not adversarially trained)")
        self.eps, self.steps, self.step_size, self.model_eps = eps, steps, step_size, model_eps
        self.clean_model = None

    def poison(self, train, rate, seed=0):
        self.check_ready()
        return super().poison(train, rate, seed)

    def check_ready(self):
        if self.clean_model is None:
            raise PurifyError("lc needs a clean model to craft its perturbations: set attack.clean_model (the victim zoo does)")

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.full((len(images),), self.target, dtype=torch.long, device=images.device)
        return self.apply(pgd(self.clean_model, images, labels, self.eps, self.steps, self.step_size))


def pgd(model, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, step_size: float, batch_size: int = 256) -> torch.Tensor:
    """Untargeted L-infinity PGD on uint8 images; returns uint8 images within ``eps`` of the originals, where the
    images were (the model may be elsewhere)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        clean = images[start : start + batch_size].to(device).float() / 255
        target = labels[start : start + batch_size].to(device)
        adv = clean.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), target)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = (adv.detach() + step_size * grad.sign()).clamp(clean - eps, clean + eps).clamp(0, 1)
        out.append((adv * 255).round().to(torch.uint8).to(images.device))
    model.train(was_training)
    return torch.cat(out) if out else images.clone()
