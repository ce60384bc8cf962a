"""RNP, Reconstructive Neuron Pruning (Li et al., ICML 2023).

Unlearn, then recover, then prune what recovery needed least:

1. **Unlearning** (Eq. 1): maximise the cross-entropy on the clean defense data with every weight
   free, SGD lr 0.01, momentum 0.9, weight decay 5e-4, the rate cut tenfold at epochs 10 and 20,
   until an epoch's running training accuracy falls to ``clean_threshold`` = 0.2 (at most
   ``unlearn_epochs`` = 20).  Clean features are destroyed; backdoor ones, untouched by clean data,
   survive.
2. **Recovering** (Eq. 2): on the unlearned model, a mask ``m`` in [0, 1] per BatchNorm channel
   (weight ``gamma * m``, starting at 1) minimises ``alpha * CE`` (alpha 0.2) on the same data,
   SGD lr 0.2, momentum 0.9, ``recover_epochs`` = 20.  Recovery restores the clean channels; the
   backdoor channels, not needed for it, are the ones whose masks fall.
3. **Pruning**: channels whose mask ends at or below ``threshold`` (``pruning_by="threshold"``), or
   the ``number`` channels with the lowest masks over all BatchNorm layers (``pruning_by="number"``,
   the official code's ``--pruning-by number``), are pruned from the *original* victim (BatchNorm
   weight zeroed); nothing is fine-tuned afterwards.

Defaults are BackdoorBench's ``defense/rnp.py`` (1% clean data, batch 256), whose final model is
pruned at a fixed threshold of 0.7 (``pruning_number``).  The official code (bboylyg/RNP, batch 128
for both phases, 500 images) prunes by threshold too, but sweeps thresholds against the test set
and names no final one, which a defender cannot do; so BackdoorBench's fixed 0.7 stays the default.
``extra`` has the unlearned and the recovered model's metrics as well as the pruned one's.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..errors import PurifyError, choose
from .base import Defended, batch_norms, defense, frozen_except, timed, tune
from .nft import ChannelMask


PRUNING_RULES = ("threshold", "number")


def prune_by_masks(model, masks, threshold: float | None = None, number: int | None = None):
    """A copy of ``model`` with BatchNorm channels pruned (weight zeroed), and how many were: every channel whose
    mask is at or below ``threshold``, or the ``number`` lowest masks over all layers (ties broken by position).
    ``masks`` as RNP's ``extra["masks"]`` holds them."""
    if (threshold is None) == (number is None):
        raise PurifyError("prune_by_masks takes one of threshold= or number=")
    pruned_model = copy.deepcopy(model)
    norms = batch_norms(pruned_model)
    flat = torch.cat([torch.as_tensor(mask, dtype=torch.float32).flatten().cpu() for mask in masks])
    if number is not None:
        if not 0 <= number <= len(flat):
            raise PurifyError(f"number={number} must be between 0 and the {len(flat)} masked channels")
        cut = torch.zeros(len(flat), dtype=torch.bool)
        cut[torch.sort(flat, stable=True).indices[:number]] = True
    else:
        cut = flat <= threshold
    with torch.no_grad():
        start = 0
        for norm in norms:
            part = cut[start : start + norm.num_features].to(norm.weight.device)
            norm.weight[part] = 0.0
            start += norm.num_features
    return pruned_model, int(cut.sum())


class _Unlearned(Exception):
    """Raised after the unlearning epoch that reached the clean-accuracy threshold."""


@defense(fraction=0.01, published={"RNP"}, smoke={"unlearn_epochs": 2, "recover_epochs": 2})
def rnp(model, data, evaluator=None, *, clean_threshold=0.2, unlearn_lr=0.01, unlearn_epochs=20, recover_lr=0.2,
        recover_epochs=20, alpha=0.2, pruning_by="threshold", threshold=0.7, number=0, batch_size=256, seed=0,
        progress=False) -> Defended:
    """Unlearn, recover with channel masks, prune the low-mask channels of the victim (RNP Sec. 3)."""
    choose("pruning_by", pruning_by, PRUNING_RULES)
    params = dict(clean_threshold=clean_threshold, unlearn_lr=unlearn_lr, unlearn_epochs=unlearn_epochs, recover_lr=recover_lr,
                  recover_epochs=recover_epochs, alpha=alpha, pruning_by=pruning_by, threshold=threshold, number=number,
                  batch_size=batch_size, seed=seed)
    original, unlearned = model, copy.deepcopy(model)
    history = [{"epoch": 0, **evaluator(original, final=False)}] if evaluator is not None else []

    def run():
        hits = [0, 0]

        def ascent(net, x, y):
            out = net(x)
            hits[0] += int((out.argmax(1) == y).sum())
            hits[1] += len(y)
            return -F.cross_entropy(out, y)

        def check(epoch, net):
            accuracy, hits[:] = hits[0] / max(hits[1], 1), [0, 0]
            if accuracy <= clean_threshold:
                raise _Unlearned(epoch)

        per_epoch = math.ceil(len(data) / batch_size)
        steps_down = lambda step: 0.1 ** ((step // per_epoch >= 10) + (step // per_epoch >= 20))  # MultiStepLR [10, 20]
        epochs_run = unlearn_epochs
        try:
            tune(unlearned, data, frozen_except(unlearned, list(unlearned.parameters())), epochs=unlearn_epochs, lr=unlearn_lr,
                 batch_size=batch_size, weight_decay=5e-4, schedule=steps_down, loss_fn=ascent, on_epoch=check, seed=seed,
                 progress=progress, desc="rnp unlearn")
        except _Unlearned as done:
            epochs_run = done.args[0]
        stages = {"unlearned": evaluator(unlearned)} if evaluator is not None else {}  # on the whole test set
        device = next(unlearned.parameters()).device
        masks = []
        for norm in batch_norms(unlearned):
            parametrize.register_parametrization(norm, "weight", ChannelMask(norm.num_features, device))
            masks.append(norm.parametrizations.weight[0].mask)
        frozen_except(unlearned, masks)
        tune(unlearned, data, masks, epochs=recover_epochs, lr=recover_lr, batch_size=batch_size, schedule="constant",
             loss_fn=lambda net, x, y: alpha * F.cross_entropy(net(x), y), after_step=lambda net: [m.clamp_(0, 1) for m in masks],
             seed=seed, progress=progress, desc="rnp recover")
        if evaluator is not None:
            stages["recovered"] = evaluator(unlearned.eval())
        rule = {"threshold": threshold} if pruning_by == "threshold" else {"number": number}
        pruned_model, pruned = prune_by_masks(original, [m.detach() for m in masks], **rule)
        return pruned_model, {"unlearn_epochs": epochs_run, "pruned": pruned, "channels": sum(len(m) for m in masks),
                              "masks": [m.detach().cpu().clone() for m in masks], **stages}

    (model, extra), seconds = timed(run)
    if evaluator is not None:
        history.append({"epoch": 1, **evaluator(model)})
    return Defended(model.eval(), "rnp", params, seconds, history, extra)
