"""D3, Distance-Driven Detoxification (Wei, Liu, Zha).

Maximise the distance of selected weights ``theta_s`` (the linear head by default) from
the backdoored ones while a per-sample hinge keeps the clean loss under ``eps``:

    min_theta  lambda * mean_i relu(CE_i(theta) - eps)  -  sum_l ||W_l - W_l^0||_F

with each selected ``W_l`` projected back onto the sphere ``||W_l||_F = ||W_l^0||_F`` after
every step and warm-started at a random point of that sphere.  As in the official code the
whole network is optimised (SGD, momentum 0.9, cosine), the distance acts on the selected
weights only, and the loss is divided by ``lambda + 1`` when ``lambda > 1``.
``lmd`` defaults to the paper's 10; the official code uses 0.5.  ``eps`` 0.1.  The hinge is
per sample as in the official code (``hinge="per_sample"``); the paper's Eq. 4 puts it on the
batch mean, ``relu(mean_i CE_i - eps)`` (``hinge="mean"``), which lets some samples' loss
exceed eps as long as the average does not.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PurifyError, choose
from ..seeds import stream
from .base import Defended, defense, rescale_, timed, tune

HINGES = ("per_sample", "mean")


def selected_weights(model: nn.Module, layers) -> list[nn.Parameter]:
    """Weights of every Linear and Conv2d inside the named submodules."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        top = ", ".join(name for name, _ in model.named_children())
        raise PurifyError(f"D3 cannot find layer(s) {', '.join(missing)}; top-level modules are: {top}")
    chosen = [m.weight for name in layers for m in modules[name].modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not chosen:
        raise PurifyError(f"layers {', '.join(layers)} hold no Linear or Conv2d weights for D3 to move")
    return chosen


@defense(published={"D3"}, smoke={"epochs": 2}, cpu=({"epochs": 20}, "20 of its 100 epochs, about a minute at width 16"), tests={"epochs": 5})
def d3(model, data, evaluator=None, *, layers=("head",), lmd=10.0, eps=0.1, epochs=100, lr=0.01, batch_size=256,
       warm_start=True, hinge="per_sample", seed=0, progress=False) -> Defended:
    """Distance-driven detoxification (D3 Eq. 3 with the hinge relaxation and norm projection)."""
    choose("D3 hinge", hinge, HINGES)
    params = dict(layers=list(layers), lmd=lmd, eps=eps, epochs=epochs, lr=lr, batch_size=batch_size, warm_start=warm_start,
                  hinge=hinge, seed=seed)
    model = copy.deepcopy(model)
    weights = selected_weights(model, layers)
    originals = [w.detach().clone() for w in weights]
    norms = [w.norm() for w in originals]
    if warm_start:
        generator = stream("d3-warm-start", seed)
        with torch.no_grad():
            for w, norm in zip(weights, norms):
                w.copy_(torch.empty(w.shape).uniform_(-0.5, 0.5, generator=generator))
                rescale_(w, norm)

    def loss_fn(net, x, y):
        losses = F.cross_entropy(net(x), y, reduction="none")
        penalty = F.relu(losses - eps).mean() if hinge == "per_sample" else F.relu(losses.mean() - eps)
        distance = sum((w - w0).norm() for w, w0 in zip(weights, originals))
        loss = lmd * penalty - distance
        return loss / (lmd + 1) if lmd > 1 else loss

    def project(net):
        for w, norm in zip(weights, norms):
            rescale_(w, norm)

    history, seconds = timed(lambda: tune(model, data, list(model.parameters()), epochs=epochs, lr=lr, batch_size=batch_size,
                                          loss_fn=loss_fn, after_step=project, evaluator=evaluator, seed=seed,
                                          progress=progress, desc="d3"))
    distance = sum((w - w0).norm() for w, w0 in zip(weights, originals)).item()
    return Defended(model.eval(), "d3", params, seconds, history, {"distance": distance})
