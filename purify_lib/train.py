"""Fast victim training: data held on the device, batched augmentation, channels_last, and autocast
(bf16 on CPUs and GPUs that have it; see ``precision.py``)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import ImageSet, augment, to_float
from .errors import PurifyError, choose
from .precision import autocast, resolve_precision
from .seeds import seed_global, stream

# onecycle: PyTorch's OneCycleLR (cosine up over ``warmup_fraction`` of the steps, cosine down);
# triangle: the same with straight lines, as airbench trains, which keeps more steps at a low rate.
SCHEDULES = ("cosine", "onecycle", "triangle", "constant")


@dataclass(frozen=True)
class Recipe:
    """How a victim is trained.  Defaults are BackdoorBench's (DESIGN.md)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_fraction: float = 0.3  # onecycle and triangle: the share of steps spent rising to ``lr`` (PyTorch's default)
    augment: bool = True  # random crop (zero padding ``crop_padding``) and horizontal flip
    crop_padding: int = 4
    seed: int = 0

    def __post_init__(self):
        choose("schedule", self.schedule, SCHEDULES)
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise PurifyError(f"recipe needs epochs >= 1, batch_size >= 1 and lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}")
        if not 0 < self.warmup_fraction < 1:
            raise PurifyError(f"warmup_fraction={self.warmup_fraction} must be in (0, 1)")

    def as_dict(self) -> dict:
        return asdict(self)


def make_scheduler(optimizer, schedule, lr: float, total_steps: int, warmup_fraction: float = 0.3):
    """A per-step scheduler: a named schedule, or a callable ``step -> lr multiplier``."""
    if callable(schedule):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total_steps, 1))
    if schedule in ("onecycle", "triangle"):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 1), pct_start=warmup_fraction,
                                                   anneal_strategy="cos" if schedule == "onecycle" else "linear")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def batches(count: int, batch_size: int, device, generator: torch.Generator, drop_last: bool = False,
            replacement: bool = False):
    """Shuffled index batches for one epoch; the permutation comes from a CPU generator so runs repeat
    (callers pass each epoch its own, ``seeds.stream("order", seed, epoch)``).  ``replacement``: as many
    full batches, each drawn with replacement (NFT's ``RandomSampler(replacement=True)``)."""
    if replacement:
        for _ in range(math.ceil(count / batch_size)):
            yield torch.randint(0, count, (batch_size,), generator=generator).to(device)
        return
    order = torch.randperm(count, generator=generator).to(device)
    stop = count - count % batch_size if drop_last and count >= batch_size else count
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def fgsm_rs(model, x: torch.Tensor, y: torch.Tensor, eps: float, device, precision: str) -> torch.Tensor:
    """FGSM from a random start (Wong, Rice & Kolter, "Fast is better than free", ICLR 2020):
    one signed-gradient step of 1.25 eps from a uniform point of the eps-ball, clipped back to it."""
    delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
    with autocast(device, precision):
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)).float(), y)
    (grad,) = torch.autograd.grad(loss, delta)
    return (x + (delta.detach() + 1.25 * eps * grad.sign()).clamp(-eps, eps)).clamp(0, 1)


def train_model(model, data: ImageSet, recipe: Recipe, attack=None, poison_rate: float = 0.0,
                progress: bool = True, on_epoch=None, precision: str | None = None, adversarial_eps: float = 0.0,
                compile: bool = False):
    """Train ``model`` (already on its device) on uint8 ``data`` with ``recipe``.

    A training-controlled ``attack`` poisons every batch at ``poison_rate``; other attacks
    arrive already baked into ``data``.  ``on_epoch(epoch, model)`` is called after each epoch.
    ``precision`` (default ``$PURIFY_PRECISION``, else ``auto``) is checked before training.
    ``adversarial_eps > 0`` trains on ``fgsm_rs`` examples of that L-infinity radius (pixels in
    [0, 1]) instead of the images: LC's adversarially trained model, at about twice the cost.
    ``compile``: the model's forward and backward through ``torch.compile`` (inductor), its compile paid at the
    first batch of each call; ``scripts/bench_victim.py`` measures what it gains (the cpu profile turns it on for victims).
    """
    device = next(model.parameters()).device
    precision = resolve_precision(device, precision)
    # Three streams (seeds.py): the batch order, the augmentation, and the global generator that a
    # training-controlled attack's per-batch draws (WaNet's, IAD's) and FGSM's random starts take.
    seed_global("train", recipe.seed)
    augment_stream = stream("augment", recipe.seed, device=device)
    images, labels = data.images.to(device), data.labels.to(device)
    model.to(memory_format=torch.channels_last).train()
    forward = torch.compile(model) if compile else model  # the same parameters: the optimizer below updates both
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / recipe.batch_size)
    scheduler = make_scheduler(optimizer, recipe.schedule, recipe.lr, recipe.epochs * steps_per_epoch, recipe.warmup_fraction)
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")  # bf16 has fp32's range and needs no scaling
    bar = tqdm(total=recipe.epochs * steps_per_epoch, disable=not progress, desc="train", unit="batch", leave=False)
    controlled = attack is not None and attack.training_controlled
    # WaNet, as BackdoorBench trains it: its own augmentation after the warp replaces the recipe's before it
    augment_after = recipe.augment and controlled and attack.augments_after_poison
    for epoch in range(recipe.epochs):
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device, read once an epoch
        for index in batches(len(labels), recipe.batch_size, device, stream("order", recipe.seed, epoch)):
            x, y = to_float(images[index]), labels[index]
            if recipe.augment and not augment_after:
                x = augment(x, padding=recipe.crop_padding, generator=augment_stream)
            if controlled:
                x, y = attack.poison_batch(x, y, poison_rate)
            if augment_after:
                x = attack.augment(x)
            x = x.contiguous(memory_format=torch.channels_last)
            if adversarial_eps:
                x = fgsm_rs(forward, x, y, adversarial_eps, device, precision)
            with autocast(device, precision):
                loss = F.cross_entropy(forward(x).float(), y)
            extra = attack.extra_loss() if controlled else None
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss if extra is None else loss + extra).backward()
            scaler.step(optimizer)
            if controlled:
                attack.after_step(scaler)
            scaler.update()
            scheduler.step()
            epoch_loss += loss.detach()
            bar.update()
        if progress:  # the one host synchronisation of an epoch, and only for the bar
            bar.set_postfix(epoch=epoch, loss=f"{epoch_loss.item() / steps_per_epoch:.3f}", refresh=False)
        if on_epoch is not None:
            on_epoch(epoch, model)
    bar.close()
    return model.eval()
