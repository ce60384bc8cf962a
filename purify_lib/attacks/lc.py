"""Label-consistent attack (Turner et al., 2019): clean-label, adversarially hardened poisons.

Target-class training images are first pushed away from their own class by an
L-infinity PGD attack (eps 16/255) on a clean model, so the network cannot classify
them from their content and leans on the trigger; then the BadNets patch is pasted.
Labels are untouched; test images get the patch only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PurifyError
from .badnets import BadNets


class LC(BadNets):
    name = "lc"
    clean_label = True
    needs_clean_model = True

    def __init__(self, target: int = 0, eps: float = 16 / 255, steps: int = 10, step_size: float = 2 / 255, trigger_path=None):
        super().__init__(target, trigger_path)
        self.eps, self.steps, self.step_size = eps, steps, step_size
        self.clean_model = None

    def params(self) -> dict:
        return {**super().params(), "eps": round(self.eps, 6), "steps": self.steps, "step_size": round(self.step_size, 6)}

    def poison(self, train, rate, seed=0):
        self.check_ready()
        return super().poison(train, rate, seed)

    def check_ready(self):
        if self.clean_model is None:
            raise PurifyError("lc needs a clean model to craft its perturbations: set attack.clean_model (the victim zoo does)")

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.full((len(images),), self.target, dtype=torch.long)
        return self.apply(pgd(self.clean_model, images, labels, self.eps, self.steps, self.step_size))


def pgd(model, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, step_size: float, batch_size: int = 256) -> torch.Tensor:
    """Untargeted L-infinity PGD on uint8 images; returns uint8 images within ``eps`` of the originals."""
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
        out.append((adv * 255).round().to(torch.uint8).cpu())
    model.train(was_training)
    return torch.cat(out) if out else images.clone()
