"""What every defense shares: the registry, the result type, the tuning loop, and small model helpers.

A defense is one function ``name(model, data, evaluator=None, *, **params) -> Defended`` in one module of
this package, declared with ``@defense(...)`` (below): what data it takes, its budget per profile, the names
its papers' tables give it.  ``purify_lib.defenses`` imports every module here, so the declaration is all
the rest of the library needs.  It works on its own copy of ``model`` (the zoo's victim is never changed),
tunes on the uint8 ``data`` with ``tune`` below, and, when an ``evaluator`` is given, records ACC, ASR
and RA as it goes (row 0 is the model as tuning starts, after any re-initialisation).

Three contracts: every parameter after ``evaluator`` is keyword-only (``@defense`` refuses others), so
``purify`` checks it and ``defend`` puts it in the cache key; ``params`` in the result are JSON values;
``extra`` is stored as JSON, so a cached result gives back lists where a fresh one had tensors.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import ImageSet, augment, to_float
from ..errors import PurifyError, choose
from ..precision import autocast, resolve_precision
from ..seeds import seed_global, stream
from ..train import batches, make_scheduler


@dataclass
class Defended:
    """A purified model and what it took: parameters, wall time, per-epoch metrics, extras."""

    model: torch.nn.Module
    method: str
    params: dict
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    cache_hit: bool = False  # True when ``defend`` loaded this result instead of running the defense
    cache_entry: str = ""  # the name of its entry in ``defend``'s cache (empty when not cached)


# Where a defense's data comes from (``defend`` draws it): a class-balanced share of clean training images,
# the victim's poisoned training set (the PAD family), or the first images of each class of the test split (MM-BD's code).
DATA_SOURCES = ("clean", "poisoned", "test")
POSITIONAL = ["model", "data", "evaluator"]


@dataclass(frozen=True)
class Defense:
    """A registered defense: its function and what the rest of the library needs to know of it."""

    fn: Callable
    data: str  # one of DATA_SOURCES
    fraction: float  # clean data: the share of the training set its paper states
    per_class: int | None  # test data: images of each class
    budgets: dict  # profile name ("smoke", "cpu"; "tests" for the test suite) -> (settings, one-line reason)
    published: frozenset  # the names its papers' tables give it
    rebuild: Callable | None  # turns a copy of the victim into the purified model's architecture before its weights load

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def module(self) -> str:
        return self.fn.__module__

    def __call__(self, *args, **kwargs) -> "Defended":
        return self.fn(*args, **kwargs)

    def parameters(self) -> dict:
        """The keyword parameters and their defaults."""
        return {k: p.default for k, p in inspect.signature(self.fn).parameters.items() if p.kind is p.KEYWORD_ONLY}

    def budget(self, profile: str) -> dict:
        """The settings this defense runs with under ``profile`` (none: its paper's defaults)."""
        return dict(self.budgets.get(profile, ({}, ""))[0])


DEFENSES: dict[str, Defense] = {}


# The reason a profile's budget has where a defense gives settings alone.
STANDING_REASONS = {"smoke": "seconds on the smoke victims, for CI", "tests": "enough to show it working on the test suite's victim"}


def defense(*, data: str = "clean", fraction: float = 0.05, per_class: int | None = None, published=(), rebuild: Callable | None = None,
            **budgets):
    """Register the decorated function as a defense (its name is the function's).  ``fraction`` defaults to 5%,
    the share D3 and BackdoorBench's baselines use.  Every other keyword is a budget: a profile name (or ``tests``)
    and ``(settings, reason)``, or settings alone for ``smoke`` and ``tests``, whose reason is standing."""
    def register(fn):
        where = f"defense {fn.__name__} ({fn.__module__})"
        choose(f"{where} data", data, DATA_SOURCES)
        parameters = list(inspect.signature(fn).parameters.values())
        positional = [p.name for p in parameters if p.kind is not p.KEYWORD_ONLY]
        if positional != POSITIONAL:
            raise PurifyError(f"{where} takes {', '.join(positional)} before its keyword-only parameters; allowed: "
                              f"{', '.join(POSITIONAL)}, then '*' (a parameter that is not keyword-only escapes checking and the cache key)")
        keywords = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
        declared = {}
        for profile, budget in budgets.items():
            settings, reason = budget if isinstance(budget, tuple) else (budget, STANDING_REASONS.get(profile, ""))
            unknown = sorted(set(settings) - keywords)
            if unknown or not reason:
                raise PurifyError(f"{where}: its {profile!r} budget " + (f"sets unknown parameter(s) {', '.join(unknown)}; allowed: "
                                                                         f"{', '.join(sorted(keywords))}" if unknown else "needs a reason: (settings, reason)"))
            declared[profile] = (dict(settings), reason)
        DEFENSES[fn.__name__] = Defense(fn, data, fraction, per_class, declared, frozenset(published), rebuild)
        return DEFENSES[fn.__name__]
    return register


def cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


def tune(model, data: ImageSet, params, *, epochs: int, lr: float, batch_size: int = 128, momentum: float = 0.9,
         weight_decay: float = 0.0, schedule: str = "cosine", optimizer: str = "sgd", loss_fn=cross_entropy,
         after_step=None, step_fn=None, evaluator=None, augment_data: bool = True, frozen_eval=(),
         steps: int | None = None, eval_every: int | None = None, on_epoch=None, seed: int = 0, replacement: bool = False,
         progress: bool = False, desc: str = "tune", precision: str | None = None) -> list[dict]:
    """Optimise ``params`` of ``model`` on ``data``; return per-epoch history.

    ``loss_fn(model, x, y)`` gives the loss of a float batch; ``after_step(model)`` runs after
    every optimiser step (projections, clamps); ``step_fn(model, x, y, optimizer, loss_fn)``
    replaces the plain backward-and-step (SAM, ANP); ``on_epoch(epoch, model)`` runs after each
    epoch.  Modules in ``frozen_eval`` stay in eval mode, so the BatchNorm statistics of
    frozen parts do not drift.  ``steps`` fixes the number of
    optimiser steps instead (NFT's code counts steps); an "epoch" is then one pass over the
    data.  ``replacement`` draws every batch whole, with replacement (NFT's ``RandomSampler(replacement=True)``),
    instead of shuffling each epoch.  The evaluator runs every ``eval_every`` epochs (default: about five times in all)
    and after the last; only that last one is ``final`` (see ``metrics.Evaluator``).  Forward passes (and a ``step_fn``'s whole step) run under
    ``precision``'s autocast (default ``$PURIFY_PRECISION``, else ``auto``: bf16 where the
    hardware has it); parameters and optimiser state stay fp32.  fp16 (an older GPU) tunes in
    fp32 here: SAM's and ANP's own backward passes leave no place for a loss scaler.
    """
    device = next(model.parameters()).device
    precision = resolve_precision(device, precision)
    precision = "fp32" if precision == "fp16" else precision
    params = [p for p in params if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise PurifyError(f"unknown optimizer {optimizer!r}; allowed: sgd, adam")
    steps_per_epoch = math.ceil(len(data) / batch_size)
    if steps is not None:
        epochs = math.ceil(steps / steps_per_epoch)
    total = steps if steps is not None else epochs * steps_per_epoch
    scheduler = make_scheduler(opt, schedule, lr, total)
    seed_global("tune", seed)  # the draws a loss or step function makes (MixUp's, SAM's) on the global generator
    augment_stream = stream("tune-augment", seed, device=device)
    images, labels = data.images.to(device), data.labels.to(device)
    model.to(memory_format=torch.channels_last)  # as train_model trains; a no-op for a victim that already is
    eval_every = eval_every or max(1, epochs // 5)
    history = [{"epoch": 0, **evaluator(model, final=False)}] if evaluator is not None else []
    done = 0
    bar = tqdm(total=total, disable=not progress, desc=desc, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        for module in frozen_eval:
            module.eval()
        loss_sum, steps_done = torch.zeros((), dtype=torch.float64, device=device), 0  # read once an epoch, not every step
        for index in batches(len(labels), batch_size, device, stream("tune-order", seed, epoch), replacement=replacement):
            if done == total:
                break
            x, y = to_float(images[index]), labels[index]
            if augment_data:
                x = augment(x, generator=augment_stream)
            x = x.contiguous(memory_format=torch.channels_last)
            if step_fn is not None:
                with autocast(device, precision):
                    loss = step_fn(model, x, y, opt, loss_fn)
            else:
                with autocast(device, precision):
                    loss = loss_fn(model, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(model)
            scheduler.step()
            loss_sum += loss.detach()
            steps_done += 1
            done += 1
            bar.update()
        row = {"epoch": epoch, "loss": loss_sum.item() / max(steps_done, 1)}
        if evaluator is not None and (epoch % eval_every == 0 or epoch == epochs):
            row.update(evaluator(model, final=epoch == epochs))
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, model)
    bar.close()
    return history


def timed(fn):
    """Run ``fn()`` and return (its result, wall seconds)."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def frozen_except(model, trainable) -> list[torch.nn.Parameter]:
    """Freeze every parameter of ``model`` except those in ``trainable``; return the trainable ones."""
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if id(p) in keep]


def batch_norms(model) -> list[torch.nn.BatchNorm2d]:
    """The BatchNorm2d layers of ``model`` in module order (the channels NFT masks and ANP prunes)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def reinit_linear(layer: torch.nn.Linear, seed: int = 0) -> None:
    """PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, seeded."""
    bound = 1 / math.sqrt(layer.in_features)
    generator = stream("reinit-linear", seed)
    with torch.no_grad():
        for tensor in (layer.weight, layer.bias):
            tensor.copy_(torch.empty(tensor.shape).uniform_(-bound, bound, generator=generator))


def rescale_(tensor: torch.Tensor, norm: torch.Tensor | float) -> None:
    """Rescale ``tensor`` in place onto the sphere of Frobenius norm ``norm``."""
    tensor.mul_(norm / tensor.norm().clamp_min(1e-12))
