"""Backdoor purification methods, one module each, one entry point each.

``purify(name, model, data, evaluator=None, **params)`` runs any of them with its paper's
defaults, after checking the name, the parameter names and the defense data.  The PAD family
takes the *poisoned training set* as ``data`` (it needs no clean data); every other method
takes the clean defense data.
"""
from __future__ import annotations

import inspect

from ..errors import PurifyError, choose
from .anp import anp
from .base import Defended
from .d3 import d3
from .finetune import fe_tuning, fst, ft, ft_init, lp
from .ftsam import ft_sam
from .ibau import ibau
from .mmbd import mmbd
from .nad import nad
from .nft import nft
from .pad import pad, pad_ft

DEFENSES = {fn.__name__: fn for fn in (ft, lp, fe_tuning, ft_init, fst, nft, d3, pad, pad_ft, ft_sam, anp, ibau, nad, mmbd)}
NEEDS_POISONED_DATA = {"pad", "pad_ft"}
# Clean defense data as a share of the full training set, as each paper states it:
# FST 2%, NFT 1%, D3 and BackdoorBench's baselines 5%; MM-BD's code uses 50 images per class.
DATA_FRACTION = {"ft": 0.02, "lp": 0.02, "fe_tuning": 0.02, "ft_init": 0.02, "fst": 0.02, "nft": 0.01, "mmbd": 0.01}
DEFAULT_FRACTION = 0.05


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


def defend(victim, name: str, profile=None, evaluate: bool = True, data_fraction: float | None = None,
           per_class: int | None = None, cache: bool = True, **params) -> Defended:
    """Run defense ``name`` on a zoo victim: the paper's defense data, the profile's budget, ``params`` on top.

    The PAD family gets the victim's poisoned training set (and its poisoned indices, for the
    report); every other method a class-balanced share of the clean reserve: ``data_fraction``
    of the full training set (default: the paper's), or ``per_class`` images of each class
    (``per_class=1`` is NFT's one-shot setting).  With ``cache`` (the default) the purified
    model and its report are stored beside the victim zoo and a repeated call loads them.
    """
    from ..metrics import Evaluator
    from ..profiles import get_profile

    choose("defense", name, DEFENSES)
    settings = {**get_profile(profile or victim.profile).defense_params(name), **params}
    if name in NEEDS_POISONED_DATA:
        poisoned = victim.poisoned_train()
        data = poisoned.data
        settings.setdefault("poisoned", poisoned.poisoned)
    else:
        if per_class is not None:
            data_fraction = per_class * victim.splits.num_classes / victim.splits.full_train_size
        data = victim.splits.defense_data(data_fraction or DATA_FRACTION.get(name, DEFAULT_FRACTION))
    evaluator = Evaluator(victim.splits.test, victim.attack) if evaluate else None
    # Checked here as well as in purify, so a bad name fails before a cached entry is looked up.
    unknown = sorted(set(settings) - set(parameters_of(name)))
    if unknown:
        raise PurifyError(f"unknown parameter(s) {', '.join(unknown)} for defense {name!r}; allowed: {', '.join(parameters_of(name))}")

    def run():
        return purify(name, victim.model, data, evaluator, **settings)

    if not cache:
        return run()
    from ..zoo import zoo_dir
    from .cache import cached_defense

    spec = {"poisoned_train": True} if name in NEEDS_POISONED_DATA else {"fraction": data_fraction or DATA_FRACTION.get(name, DEFAULT_FRACTION), "size": len(data)}
    return cached_defense(victim, name, settings, spec, evaluate, run, zoo_dir() / "defended")


__all__ = ["DATA_FRACTION", "DEFENSES", "defend", "NEEDS_POISONED_DATA", "Defended", "parameters_of", "purify"]
