"""Backdoor purification methods, one module each, one entry point each.

``purify(name, model, data, evaluator=None, **params)`` runs any of them with its paper's
defaults, after checking the name, the parameter names and the defense data.  The PAD family
takes the *poisoned training set* as ``data`` (it needs no clean data); every other method
takes the clean defense data.  Defenses are pure (model, data -> model) and know nothing of
the zoo: ``purify_lib.defend.defend`` runs one on a zoo victim, with its paper's defense data,
and caches the result.
"""
from __future__ import annotations

import inspect

from ..errors import PurifyError, choose
from .anp import anp
from .base import Defended
from .d3 import d3
from .finetune import fe_tuning, fst, ft, ft_init, lp
from .fp import fp
from .ftsam import ft_sam
from .ibau import ibau
from .mmbd import mmbd
from .nad import nad
from .nc import nc
from .nft import nft
from .pad import pad, pad_ft
from .rnp import rnp
from .sau import sau

DEFENSES = {fn.__name__: fn for fn in (ft, lp, fe_tuning, ft_init, fst, nft, d3, pad, pad_ft, ft_sam, anp, ibau, nad, mmbd, fp, nc, sau, rnp)}
NEEDS_POISONED_DATA = {"pad", "pad_ft"}
# Clean defense data as a share of the training set, as each paper states it:
# FST 2%, NFT 1%, D3 and BackdoorBench's baselines 5%, BackdoorBench's RNP 1% (its ``config/defense/rnp/config.yaml``).
DATA_FRACTION = {"ft": 0.02, "lp": 0.02, "fe_tuning": 0.02, "ft_init": 0.02, "fst": 0.02, "nft": 0.01, "rnp": 0.01}
DEFAULT_FRACTION = 0.05
# Defenses whose clean images come from the test split, as their code takes them: MM-BD's ``univ_bm.py``
# loads CIFAR-10 with ``train=False`` and keeps the first 50 images of each class.
TEST_SPLIT_PER_CLASS = {"mmbd": 50}


def parameters_of(name: str) -> dict:
    """The keyword parameters of a defense and their defaults."""
    fn = DEFENSES[choose("defense", name, DEFENSES)]
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


def purify(name: str, model, data, evaluator=None, **params) -> Defended:
    """Run defense ``name`` on a copy of ``model``; the victim itself is left as it was."""
    allowed = parameters_of(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise PurifyError(f"unknown parameter(s) {', '.join(unknown)} for defense {name!r}; allowed: {', '.join(allowed)}")
    if len(data) == 0:
        raise PurifyError(f"defense {name!r} got an empty defense set")
    classes = int(data.labels.unique().numel())
    if classes < 2 and name != "mmbd":  # clipping matches logits; every other method fits labels
        raise PurifyError(f"defense {name!r} needs defense data from at least 2 classes; got {classes}")
    return DEFENSES[name](model, data, evaluator, **params)


__all__ = ["DATA_FRACTION", "DEFAULT_FRACTION", "DEFENSES", "NEEDS_POISONED_DATA", "TEST_SPLIT_PER_CLASS", "Defended", "parameters_of", "purify"]
