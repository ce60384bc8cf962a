"""Activation clipping as in MM-BD's mitigation (Wang et al., "MM-BD: Post-Training Detection of
Backdoor Attacks with Arbitrary Backdoor Pattern Types Using a Maximum Margin Statistic",
IEEE S&P 2024), used on its own and as PAD's clipping step.

Per-channel upper bounds ``z`` are placed on post-ReLU activations of the early stages
(``model.clip_points``: where ``univ_bm.py`` clips a ResNet-18, or the nearest post-ReLU
point of a PreAct network), start at 8, and are learned with Adam (lr 0.1, batch 200,
50 epochs: the official values) so that the clipped model's logits stay close to the
original's while the bounds shrink:

    min_z  MSE(f_z(x), f(x))  +  c * sum_k ||z_k||_2

As in ``univ_bm.py``, the samples the original model misclassifies are dropped from the
clipping data first.  ``c`` starts at 0.5 and, every 10 epochs after the 10th, is multiplied
by 1.2 while the clipped model still classifies at least 95% of the kept samples as the
original does, else divided by 1.2; with 10 epochs or fewer it never adapts.  BatchNorm
statistics stay fixed.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PurifyError
from ..data import ImageSet
from ..metrics import logits, predict
from .base import Defended, defense, frozen_except, timed, tune


class ActivationClip(nn.Module):
    """``min(x, z)`` with one learnable bound per channel."""

    def __init__(self, channels: int, initial: float, device):
        super().__init__()
        self.bound = nn.Parameter(torch.full((channels, 1, 1), float(initial), device=device))

    def forward(self, x):
        return torch.minimum(x, self.bound)


def insert_clips(model: nn.Module, initial: float = 8.0) -> list[ActivationClip]:
    """Wrap each of ``model.clip_points`` as ``Sequential(module, ActivationClip)``; return the clips."""
    points = getattr(model, "clip_points", None)
    if not points:
        raise PurifyError(f"{type(model).__name__} names no clip_points for activation clipping")
    modules = dict(model.named_modules())
    channels = {}
    hooks = [modules[name].register_forward_hook(lambda m, i, out, name=name: channels.__setitem__(name, out.shape[1])) for name in points]
    device = next(model.parameters()).device
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32, device=device))
    for hook in hooks:
        hook.remove()
    clips = []
    for name in points:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        clip = ActivationClip(channels[name], initial, device)
        setattr(parent, child, nn.Sequential(getattr(parent, child), clip))  # digit names work for Sequential too
        clips.append(clip)
    return clips


def learn_clipping(model, data, evaluator=None, *, epochs=50, lr=0.1, batch_size=200, initial=8.0, c=0.5, factor=1.2,
                   agreement=0.95, seed=0, progress=False, method="mmbd"):
    """Clip a copy of ``model`` and learn its bounds on ``data``; returns (model, history, extras)."""
    reference = copy.deepcopy(model).eval()
    model = copy.deepcopy(model)
    clips = insert_clips(model, initial)
    bounds = frozen_except(model, [clip.bound for clip in clips])
    weight = {"c": c}
    # The clipping data is not augmented and the reference is fixed, so its logits are computed once, not
    # at every step (a quarter of a clipping step's time at width 16 on a CPU).
    reference_logits = logits(reference, data.images)
    reference_preds = reference_logits.argmax(1)
    correct = torch.nonzero(reference_preds == data.labels).squeeze(1)
    if len(correct) == 0:
        raise PurifyError(f"{method}: the model misclassifies all {len(data)} clipping samples; none is left to learn bounds on")
    data, reference_preds = data.subset(correct), reference_preds[correct]
    targets = reference_logits[correct].to(next(model.parameters()).device)
    rows = ImageSet(data.images, torch.arange(len(data)))  # a batch's "labels" are its rows in ``targets``

    def loss_fn(net, x, row):
        return F.mse_loss(net(x).float(), targets[row]) + weight["c"] * sum(b.norm() for b in bounds)

    def adapt(epoch, net):
        if epoch > 10 and epoch % 10 == 0:
            agree = (predict(net, data.images) == reference_preds).float().mean().item()
            weight["c"] = weight["c"] * factor if agree >= agreement else weight["c"] / factor

    history = tune(model, rows, bounds, epochs=epochs, lr=lr, batch_size=batch_size, optimizer="adam", schedule="constant",
                   loss_fn=loss_fn, on_epoch=adapt, evaluator=evaluator, augment_data=False, frozen_eval=[model],
                   seed=seed, progress=progress, desc=method)
    frozen_except(model, list(model.parameters()))
    extra = {"final_c": weight["c"], "mean_bound": [b.detach().mean().item() for b in bounds], "clip_samples": len(data)}
    return model.eval(), history, extra


@defense(data="test", per_class=50, published={"MM-BD"}, rebuild=insert_clips, smoke={"epochs": 2}, tests={"epochs": 20},
         cpu=({"epochs": 30}, "30 of its 50 epochs, as PAD's clipping under cpu: c still adapts (at epoch 20)"))
def mmbd(model, data, evaluator=None, *, epochs=50, lr=0.1, batch_size=200, initial=8.0, c=0.5, seed=0, progress=False) -> Defended:
    """MM-BD's activation-clipping mitigation on the clean defense data."""
    params = dict(epochs=epochs, lr=lr, batch_size=batch_size, initial=initial, c=c, seed=seed)
    (clipped, history, extra), seconds = timed(lambda: learn_clipping(model, data, evaluator, epochs=epochs, lr=lr, batch_size=batch_size,
                                                                        initial=initial, c=c, seed=seed, progress=progress))
    return Defended(clipped, "mmbd", params, seconds, history, extra)
