"""FT-SAM (Zhu et al., "Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware
Minimization", ICCV 2023): fine-tune every weight with (adaptive) SAM.

Each step: gradient g at w; ascend to ``w + e`` with ``e = rho * w^2 g / ||w g||`` (adaptive,
BackdoorBench's default) or ``rho * g / ||g||``; gradient there, with BatchNorm statistics
left alone; step from w.  BackdoorBench defaults (``defense/ft-sam.py``, ``config/defense/ft-sam``):
rho 2, lr 0.01, momentum 0.9, weight decay 5e-4, label smoothing 0.1, batch 256, 100 epochs.
Its ``CosineAnnealingLR(T_max=100)`` is stepped after every *batch*, so the rate falls to 0
over 100 steps and climbs back over the next 100, again and again: ``lr_period=100`` (steps
per half cycle).  ``lr_period=None`` anneals once over the whole run instead.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Defended, defense, timed, tune


@defense(published={"FT-SAM", "FT+SAM"}, smoke={"epochs": 2}, cpu=({"epochs": 10}, "10 of BackdoorBench's 100 epochs, about a minute at width 16"),
          tests={"epochs": 5, "lr": 0.05})
def ft_sam(model, data, evaluator=None, *, rho=2.0, adaptive=True, epochs=100, lr=0.01, weight_decay=5e-4,
           label_smoothing=0.1, batch_size=256, lr_period=100, seed=0, progress=False) -> Defended:
    """Fine-tuning with sharpness-aware minimisation (FT-SAM Alg. 1)."""
    params = dict(rho=rho, adaptive=adaptive, epochs=epochs, lr=lr, weight_decay=weight_decay,
                  label_smoothing=label_smoothing, batch_size=batch_size, lr_period=lr_period, seed=seed)
    schedule = "cosine" if lr_period is None else (lambda step: (1 + math.cos(math.pi * step / lr_period)) / 2)
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def loss_fn(net, x, y):
        return F.cross_entropy(net(x), y, label_smoothing=label_smoothing)

    def sam_step(net, x, y, optimizer, loss_fn):
        loss = loss_fn(net, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        weights = [p for p in net.parameters() if p.grad is not None]
        with torch.no_grad():
            scaled = [(p.abs() if adaptive else 1.0) * p.grad for p in weights]
            scale = rho / (torch.stack([s.norm() for s in scaled]).norm() + 1e-12)
            steps = [((p.abs() if adaptive else 1.0) * s * scale) for p, s in zip(weights, scaled)]
            for p, e in zip(weights, steps):
                p.add_(e)
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0  # the ascent point's batch must not move the running statistics
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net, x, y).backward()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        with torch.no_grad():
            for p, e in zip(weights, steps):
                p.sub_(e)
        optimizer.step()
        return loss

    history, seconds = timed(lambda: tune(model, data, list(model.parameters()), epochs=epochs, lr=lr, batch_size=batch_size,
                                          weight_decay=weight_decay, schedule=schedule, loss_fn=loss_fn, step_fn=sam_step,
                                          evaluator=evaluator,
                                          seed=seed, progress=progress, desc="ft_sam"))
    return Defended(model.eval(), "ft_sam", params, seconds, history)
