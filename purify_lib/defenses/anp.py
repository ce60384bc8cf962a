"""ANP, Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021).

Every BatchNorm channel gets a mask ``m`` in [0, 1] and, during optimisation, a multiplicative
perturbation: weight ``gamma * (m + delta)``, bias ``beta * (1 + xi)``.  Each iteration draws
``delta, xi`` uniformly from ``[-eps, eps]`` and takes one signed ascent step of size ``eps``
on them (maximising the loss; as in the official code, the result is not clipped back, so a
perturbation reaches up to ``2 eps``), then a mask step on ``alpha * L_nat + (1 - alpha) * L_rob``
(Eq. 4).  Channels whose mask ends at or below ``threshold`` are pruned from the *original*
model (BatchNorm weight set to zero), as the official code does: mask optimisation runs in
train mode, so the copy it works on ends with BatchNorm statistics gathered under noise and
masks, which are not the victim's.  Defaults: eps 0.4, alpha
0.2, SGD lr 0.2 momentum 0.9 on the masks, 2000 iterations of batch 128, threshold 0.2 (the
paper's).  BackdoorBench instead picks the threshold with the lowest *test* ASR, which needs
test-time knowledge of the trigger; here the threshold is fixed.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..errors import PurifyError
from .base import Defended, batch_norms, defense, frozen_except, timed, tune


class _Perturbed(nn.Module):
    def __init__(self, channels, device, with_mask):
        super().__init__()
        self.mask = nn.Parameter(torch.ones(channels, device=device)) if with_mask else None
        self.noise = nn.Parameter(torch.zeros(channels, device=device))
        self.active = True

    def forward(self, value):
        noise = self.noise if self.active else 0.0
        return value * (self.mask + noise) if self.mask is not None else value * (1 + noise)


@defense(published={"ANP"}, smoke={"steps": 10},
          cpu=({}, "keeps the paper's 2000 steps (about eight minutes): at 200 BadNets-10% kept its ASR (95% -> 95%), at 2000 it fell from 90% to 43%"),
          tests={"steps": 30})
def anp(model, data, evaluator=None, *, eps=0.4, alpha=0.2, lr=0.2, steps=2000, batch_size=128, threshold=0.2,
        seed=0, progress=False) -> Defended:
    """Adversarial neuron pruning (ANP Eq. 4, then pruning by threshold)."""
    params = dict(eps=eps, alpha=alpha, lr=lr, steps=steps, batch_size=batch_size, threshold=threshold, seed=seed)
    original, model = model, copy.deepcopy(model)
    norms = batch_norms(model)
    if not norms:
        raise PurifyError(f"ANP prunes BatchNorm channels; {type(model).__name__} has none")
    history = [{"epoch": 0, **evaluator(model, final=False)}] if evaluator is not None else []
    device = next(model.parameters()).device
    weight_parts, bias_parts = [], []
    for norm in norms:
        parametrize.register_parametrization(norm, "weight", _Perturbed(norm.num_features, device, True))
        parametrize.register_parametrization(norm, "bias", _Perturbed(norm.num_features, device, False))
        weight_parts.append(norm.parametrizations.weight[0])
        bias_parts.append(norm.parametrizations.bias[0])
    parts = weight_parts + bias_parts
    masks = [part.mask for part in weight_parts]
    noises = [part.noise for part in parts]
    frozen_except(model, masks + noises)  # noises need gradients for the ascent step, not the optimiser

    def set_noise(active: bool):
        for part in parts:
            part.active = active

    def anp_step(net, x, y, optimizer, loss_fn):
        with torch.no_grad():
            for noise in noises:
                noise.uniform_(-eps, eps)
        set_noise(True)
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), noises)
        with torch.no_grad():
            for noise, grad in zip(noises, grads):
                noise.add_(eps * grad.sign())
        rob = F.cross_entropy(net(x), y)
        set_noise(False)
        nat = F.cross_entropy(net(x), y)
        loss = alpha * nat + (1 - alpha) * rob
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def clamp(net):
        for mask in masks:
            mask.clamp_(0, 1)

    set_noise(False)

    def run():
        tune(model, data, masks, steps=steps, epochs=0, lr=lr, batch_size=batch_size, schedule="constant",
             step_fn=anp_step, after_step=clamp, evaluator=None, seed=seed, progress=progress, desc="anp")
        pruned_model = copy.deepcopy(original)
        pruned = 0
        with torch.no_grad():
            for norm, mask in zip(batch_norms(pruned_model), masks):
                cut = mask <= threshold
                norm.weight[cut] = 0.0
                pruned += int(cut.sum())
        return pruned_model, pruned, sum(len(m) for m in masks)

    (model, pruned, total), seconds = timed(run)
    if evaluator is not None:
        history.append({"epoch": 1, **evaluator(model)})
    return Defended(model.eval(), "anp", params, seconds, history, {"pruned": pruned, "channels": total})
