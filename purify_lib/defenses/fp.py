"""FP, Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018).

Backdoor neurons lie dormant on clean inputs, so the channels of the last convolutional stage
least active on clean data are pruned, then the network is fine-tuned.  As in BackdoorBench's
``defense/fp.py``: the activation of a channel is its mean over the clean defense data of the
pooled last-stage output (the final linear layer's input); channels are pruned in ascending
order of activation, ``ceil(channels x prune_step)`` at a time (``prune_step`` 0.01), by zeroing
their columns of the final linear layer, for as long as clean accuracy stays within
``acc_ratio`` = 0.1 (relative) of where it started; then every parameter is fine-tuned with
the pruned columns held at zero: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine, batch
256, 100 epochs (BackdoorBench's ``config/defense/fp/cifar10.yaml``).

``activation`` picks what "active" means.  ``"pooled"`` (default, BackdoorBench's) is the pooled
``layer4`` output, which in this PreAct network (no final ReLU) is a signed residual sum, so the
"least active" channels are the most negative ones.  ``"relu"`` is the paper's: the mean post-ReLU
activation of the last convolutional stage's channels (``relu(layer4(x))`` averaged over positions
and images), for models that have a ``layer4``.

Two departures, both on the defender's side of the threat model: the accuracy that stops the
pruning is measured on the clean defense data, not on the test set as BackdoorBench does; and
the pruning kept is the last step that met the criterion (BackdoorBench keeps, through an
aliasing slip, the mask of the step that broke it).
"""
from __future__ import annotations

import copy
import math

import torch

from ..data import to_float
from ..errors import PurifyError, choose
from ..metrics import predict
from ..models import get_head
from .base import Defended, defense, frozen_except, timed, tune


ACTIVATIONS = ("pooled", "relu")


def channel_activity(model, images, activation: str, device) -> torch.Tensor:
    """Each last-stage channel's mean activation over ``images`` (uint8), as ``activation`` defines it."""
    if activation == "relu" and not hasattr(model, "layer4"):
        raise PurifyError(f"fp activation='relu' reads layer4's output; {type(model).__name__} has no layer4 (use 'pooled')")
    seen = []
    hook = model.layer4.register_forward_hook(lambda module, inputs, out: seen.append(torch.relu(out).float().mean((0, 2, 3)) * len(out))) \
        if activation == "relu" else None
    try:
        with torch.no_grad():
            pooled = torch.cat([model.features(to_float(images[i : i + 500].to(device))).float() for i in range(0, len(images), 500)])
    finally:
        if hook is not None:
            hook.remove()
    return pooled.mean(0) if activation == "pooled" else torch.stack(seen).sum(0) / len(images)


@defense(published={"FP"}, smoke={"epochs": 1}, cpu=({"epochs": 20}, "20 of BackdoorBench's 100 epochs, as D3 does"), tests={"epochs": 5, "lr": 0.05})
def fp(model, data, evaluator=None, *, activation="pooled", acc_ratio=0.1, prune_step=0.01, epochs=100, lr=0.01, batch_size=256,
       weight_decay=5e-4, seed=0, progress=False) -> Defended:
    """Prune the least-active last-stage channels while clean accuracy holds, then fine-tune (Liu et al. 2018, Sec. 4)."""
    choose("fp activation", activation, ACTIVATIONS)
    params = dict(activation=activation, acc_ratio=acc_ratio, prune_step=prune_step, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, seed=seed)
    model = copy.deepcopy(model).eval()
    _, head = get_head(model)
    device = next(model.parameters()).device

    def prune_and_tune():
        order = channel_activity(model, data.images, activation, device).argsort()  # least active first
        start_acc = (predict(model, data.images) == data.labels).float().mean().item()
        original = head.weight.detach().clone()
        step = math.ceil(len(order) * prune_step)
        kept = 0
        for count in range(step, len(order), step):
            with torch.no_grad():
                head.weight.copy_(original)
                head.weight[:, order[:count]] = 0
            acc = (predict(model, data.images) == data.labels).float().mean().item()
            if abs(acc - start_acc) / max(start_acc, 1e-12) >= acc_ratio:
                break
            kept = count
        pruned = order[:kept]
        with torch.no_grad():
            head.weight.copy_(original)
            head.weight[:, pruned] = 0

        def hold_pruned(net):
            head.weight[:, pruned] = 0

        history = tune(model, data, frozen_except(model, list(model.parameters())), epochs=epochs, lr=lr, batch_size=batch_size,
                       weight_decay=weight_decay, after_step=hold_pruned, evaluator=evaluator, seed=seed, progress=progress, desc="fp")
        return history, {"pruned": int(kept), "channels": len(order), "start_acc": round(100 * start_acc, 2)}

    (history, extra), seconds = timed(prune_and_tune)
    return Defended(model.eval(), "fp", params, seconds, history, extra)
