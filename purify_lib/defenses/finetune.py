"""The tuning family of FST (Min et al., "Towards Stable Backdoor Purification through
Feature Shift Tuning", NeurIPS 2023), all on one loop.

- ``ft``: vanilla fine-tuning of every parameter.
- ``lp``: linear probing, the head alone.
- ``fe_tuning``: re-initialised head, frozen; the backbone is tuned (Sec. 3.2).
- ``ft_init``: re-initialised head; everything tuned (Sec. 3.2).
- ``fst``: re-initialised head, everything tuned, loss ``CE + alpha * <W, W_orig>`` (Eq. 2),
  and after every step the head weight is rescaled to ``||W_orig||_F`` (the constraint of
  Eq. 2).  ``project_head=False`` is the paper's ablation (Fig. 5).

Settings are the paper's: SGD, momentum 0.9, lr 0.01, batch 128, 10 epochs, cosine, no weight
decay, alpha 0.2 (CIFAR-10).  ``BACKDOORBENCH_FT`` is the other FT the papers report: BackdoorBench's
``defense/ft.py`` (``config/defense/ft/config.yaml``: 5% of the data, 100 epochs, batch 256, lr 0.01,
cosine, weight decay 5e-4, no head rescaling), which D3's FT cells ran.  Where the paper is silent, the defaults follow the official
``fine_tune/ft.py``, which produced FST's Table 1:

- it rescales the head to ``||W_orig||_F`` after every step in *every* mode, so FE-tuning's
  frozen re-initialised head has the original head's norm, not a small random one:
  ``project_head=True`` for all five (``project_head=False`` gives the modes as the paper's
  Sec. 3 describes them);
- it calls ``net.train()`` in every mode, so LP re-estimates the BatchNorm statistics on the
  clean data though its weights are frozen: ``frozen_bn=False`` (``frozen_bn=True`` keeps the
  whole backbone in eval mode, a truly fixed feature extractor).
"""
from __future__ import annotations

import copy

import torch

from ..models import get_head
from .base import Defended, cross_entropy, defense, frozen_except, reinit_linear, rescale_, timed, tune


# BackdoorBench's FT, as ``defend(victim, "ft", **BACKDOORBENCH_FT)`` runs it (``data_fraction`` is defend's).
BACKDOORBENCH_FT = dict(data_fraction=0.05, epochs=100, batch_size=256, lr=0.01, weight_decay=5e-4, project_head=False)


def _feature_tuning(method, model, data, evaluator, *, reinit_head, train, alpha=0.0, project_head=True, frozen_bn=False,
                    epochs=10, lr=0.01, batch_size=128, weight_decay=0.0, seed=0, progress=False) -> Defended:
    params = dict(reinit_head=reinit_head, train=train, alpha=alpha, project_head=project_head, frozen_bn=frozen_bn,
                  epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    model = copy.deepcopy(model)
    _, head = get_head(model)
    original = head.weight.detach().clone()
    original_norm = original.norm()
    if reinit_head:
        reinit_linear(head, seed)
    head_params = list(head.parameters())
    if train == "head":
        trainable = frozen_except(model, head_params)
    elif train == "backbone":
        head_ids = {id(p) for p in head_params}
        trainable = frozen_except(model, [p for p in model.parameters() if id(p) not in head_ids])
    else:
        trainable = frozen_except(model, list(model.parameters()))
    frozen_eval = [m for m in model.children() if m is not head] if frozen_bn else []

    def loss_fn(net, x, y):
        loss = cross_entropy(net, x, y)
        return loss + alpha * (head.weight * original).sum() if alpha else loss

    def after_step(net):
        if project_head:
            rescale_(head.weight, original_norm)

    history, seconds = timed(lambda: tune(model, data, trainable, epochs=epochs, lr=lr, batch_size=batch_size,
                                          weight_decay=weight_decay, loss_fn=loss_fn, after_step=after_step, evaluator=evaluator,
                                          frozen_eval=frozen_eval, seed=seed, progress=progress, desc=method))
    frozen_except(model, list(model.parameters()))  # hand back an ordinary, fully trainable model
    return Defended(model.eval(), method, params, seconds, history)


def _mode(method: str, reinit_head: bool, train: str, doc: str):
    """One of FST's baselines: the shared loop with a fixed head treatment and trainable part."""

    def run(model, data, evaluator=None, *, epochs=10, lr=0.01, batch_size=128, weight_decay=0.0, project_head=True, frozen_bn=False,
            seed=0, progress=False):
        return _feature_tuning(method, model, data, evaluator, reinit_head=reinit_head, train=train, project_head=project_head,
                               frozen_bn=frozen_bn, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                               seed=seed, progress=progress)

    run.__name__ = run.__qualname__ = method
    run.__doc__ = doc
    return run


# FST's 2% of the training set as defense data, and the family's budgets.
FST_FAMILY = dict(fraction=0.02, smoke={"epochs": 2}, tests={"epochs": 5, "lr": 0.05})
ft = defense(published={"FT", "Vanilla FT"}, **FST_FAMILY)(_mode("ft", False, "all", "Vanilla fine-tuning of every parameter (FST Sec. 3.1)."))
lp = defense(published={"LP"}, **FST_FAMILY)(_mode("lp", False, "head", "Linear probing: only the head is tuned (FST Sec. 3.1)."))
fe_tuning = defense(published={"FE-tuning"}, **FST_FAMILY)(_mode("fe_tuning", True, "backbone", "FE-tuning: re-initialise the head, freeze it, tune the feature extractor (FST Sec. 3.2)."))
ft_init = defense(published={"FT-init"}, **FST_FAMILY)(_mode("ft_init", True, "all", "FT-init: re-initialise the head, tune everything (FST Sec. 3.2)."))


@defense(published={"FST"}, **FST_FAMILY)
def fst(model, data, evaluator=None, *, alpha=0.2, project_head=True, frozen_bn=False, epochs=10, lr=0.01, batch_size=128, seed=0,
        progress=False):
    """Feature Shift Tuning, FST Eq. 2: ``min CE + alpha <W, W_orig>`` s.t. ``||W||_F = ||W_orig||_F``."""
    return _feature_tuning("fst", model, data, evaluator, reinit_head=True, train="all", alpha=alpha, project_head=project_head,
                           frozen_bn=frozen_bn, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
