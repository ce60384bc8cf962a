"""NC, Neural Cleanse (Wang et al., IEEE S&P 2019): detect, reverse-engineer, unlearn.

For every class ``t`` a trigger ``(mask, pattern)`` is optimised so that stamping it,
``x' = (1 - mask) x + mask * pattern``, sends clean images to ``t`` with the smallest mask
(Eq. 3: ``CE(f(x'), t) + cost * |mask|_1``).  A class whose mask is abnormally small is a
backdoor target: with the L1 norms' median ``med`` and ``MAD = 1.4826 median(|l1 - med|)``, a class
is flagged when its norm is below the median and ``(med - l1) / MAD > 2`` (the anomaly index;
Sec. IV-B).  The flagged classes' triggers are then unlearned: ``unlearn_ratio`` = 20% of the clean
defense data, drawn per flagged class, are stamped with its reversed trigger, keep their true labels and
are added to the defense data, and the model is fine-tuned on the result.  No flagged class means no backdoor found: the model is returned unchanged.

Defaults are BackdoorBench's (``defense/nc.py``, ``config/defense/nc/cifar10.yaml``): mask and
pattern ``tanh(raw) / 2 + 0.5`` with raw values starting at 1, Adam lr 0.1 betas (0.5, 0.9),
batch 256, up to ``reverse_epochs`` = 80 passes per class over the defense data, each image under the
training augmentation (random crop with padding 4 and flip: BackdoorBench's ``get_transform(train=True)``),
in fp32 (BackdoorBench's ``train_step`` has no autocast, whatever the profile's precision); the cost starts
at 1e-3 and, after ``patience`` = 5 epochs with the attack success at least 98%, doubles, after 5
below it is divided by 2^1.5; the kept mask is the smallest one that reached 98% (a class that never
does keeps the mask after its first pass, as BackdoorBench's ``mask_best`` fallback does); a class stops
early once the best norm has not improved by 1% for 25 epochs (after the cost has gone both up
and down).  Unlearning fine-tunes every parameter with SGD lr 0.01, momentum 0.9, weight decay
5e-4, cosine, batch 256, 100 epochs.  BackdoorBench stamps a fresh 5% subset with triggers it
rounds through PNG files; here the reversed triggers are used as optimised, on the defense data.

``extra`` carries the detection output: every class's mask norm, the anomaly index of the smallest
norm and the flagged classes.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..data import ImageSet, augment, to_float
from ..seeds import stream
from ..train import batches
from .base import Defended, defense, frozen_except, timed, tune

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of a normal distribution's standard deviation
ANOMALY_THRESHOLD = 2.0


def reverse_trigger(model, images: torch.Tensor, target: int, *, epochs: int, lr: float, batch_size: int, init_cost: float,
                    success: float, patience: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The smallest-L1 mask (1, H, W) and its pattern (3, H, W) in [0, 1] that send ``images`` to ``target``, and that norm."""
    device = next(model.parameters()).device
    augment_stream = stream("nc-augment", seed, target, device=device)
    raw_mask = torch.ones(1, *images.shape[2:], device=device, requires_grad=True)
    raw_pattern = torch.ones(*images.shape[1:], device=device, requires_grad=True)
    optimizer = torch.optim.Adam([raw_mask, raw_pattern], lr=lr, betas=(0.5, 0.9))
    cost, up, down, raised, lowered = init_cost, 0, 0, False, False
    best_norm, best = float("inf"), None
    stale, reference, first = 0, float("inf"), None
    for epoch in range(epochs):
        hits, count = torch.zeros((), dtype=torch.long, device=device), 0  # counted on the device, read once a pass
        for index in batches(len(images), batch_size, device, stream("nc-order", seed, target, epoch)):
            mask, pattern = torch.tanh(raw_mask) / 2 + 0.5, torch.tanh(raw_pattern) / 2 + 0.5
            x = augment(to_float(images[index]), generator=augment_stream)
            out = model((1 - mask) * x + mask * pattern).float()
            loss = F.cross_entropy(out, torch.full((len(x),), target, device=device)) + cost * mask.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            hits += (out.argmax(1) == target).sum()
            count += len(x)
        if first is None:  # the fallback: the trigger after the first pass
            first = (torch.tanh(raw_mask).detach() / 2 + 0.5, torch.tanh(raw_pattern).detach() / 2 + 0.5)
        rate, norm = 100 * hits.item() / count, (torch.tanh(raw_mask) / 2 + 0.5).sum().item()
        if rate >= success and norm < best_norm:
            best_norm, best = norm, (torch.tanh(raw_mask).detach() / 2 + 0.5, torch.tanh(raw_pattern).detach() / 2 + 0.5)
        # early stop: the best norm has not improved by 1% for 25 epochs, once the cost has moved both ways
        stale = stale + 1 if best_norm >= 0.99 * reference else 0
        reference = min(reference, best_norm)
        if raised and lowered and stale >= 25:
            break
        up, down = (up + 1, 0) if rate >= success else (0, down + 1)
        if up >= patience:
            cost, up, raised = cost * 2, 0, True
        elif down >= patience:
            cost, down, lowered = cost / 2**1.5, 0, True
    if best is None:  # never reached the success rate: the trigger after the first pass, as BackdoorBench keeps
        best = first
        best_norm = first[0].sum().item()
    return best[0].cpu(), best[1].cpu(), best_norm


def anomaly(norms: list[float]) -> tuple[list[float], list[int]]:
    """Each class's anomaly index ``(med - l1) / MAD`` and the classes flagged (below the median, index > 2)."""
    values = torch.tensor(norms)
    median = values.median()
    mad = MAD_CONSISTENCY * (values - median).abs().median()
    index = ((median - values) / mad.clamp_min(1e-12)).tolist()
    return index, [t for t, (norm, score) in enumerate(zip(norms, index)) if norm <= median and score > ANOMALY_THRESHOLD]


@defense(published={"NC"}, smoke={"reverse_epochs": 1, "epochs": 1},
          cpu=({"reverse_epochs": 20, "epochs": 10}, "20 of its 80 passes per class, the fewest at which its cost schedule acts (figures/fidelity/nc_passes_5_20.md), and 10 unlearning epochs"),
          tests={"reverse_epochs": 1, "epochs": 1})
def nc(model, data, evaluator=None, *, reverse_epochs=80, reverse_lr=0.1, init_cost=1e-3, success=98.0, patience=5,
       unlearn_ratio=0.2, epochs=100, lr=0.01, batch_size=256, weight_decay=5e-4, seed=0, progress=False) -> Defended:
    """Reverse-engineer a trigger per class, flag outliers by the anomaly index, unlearn their triggers (NC Sec. IV, VI)."""
    params = dict(reverse_epochs=reverse_epochs, reverse_lr=reverse_lr, init_cost=init_cost, success=success, patience=patience,
                  unlearn_ratio=unlearn_ratio, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    model = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    classes = int(data.labels.max()) + 1

    def run():
        frozen_except(model, [])
        images = data.images.to(device)
        triggers = [reverse_trigger(model, images, t, epochs=reverse_epochs, lr=reverse_lr, batch_size=batch_size, init_cost=init_cost,
                                    success=success, patience=patience, seed=seed) for t in range(classes)]
        frozen_except(model, list(model.parameters()))
        norms = [norm for _, _, norm in triggers]
        index, flagged = anomaly(norms)
        extra = {"mask_l1": [round(n, 2) for n in norms], "anomaly_index": round(max(index), 3), "flagged": flagged,
                 "flagged_anomaly_index": [round(index[t], 3) for t in flagged]}
        if not flagged:
            return [], extra
        generator = stream("nc-unlearn-share", seed)
        stamped = []
        for t in flagged:  # each flagged trigger on its own random share of the data, labels kept
            pick = torch.randperm(len(data), generator=generator)[: round(unlearn_ratio * len(data))]
            on_device = pick.to(data.images.device)
            x = to_float(data.images[on_device])
            mask, pattern = triggers[t][0].to(x.device), triggers[t][1].to(x.device)  # where the data is, a GPU included
            stamped.append(ImageSet(((1 - mask) * x + mask * pattern).mul(255).round().to(torch.uint8), data.labels[on_device],
                                    data.indices[pick]))
        unlearn = ImageSet(torch.cat([data.images, *(s.images for s in stamped)]), torch.cat([data.labels, *(s.labels for s in stamped)]),
                           torch.cat([data.indices, *(s.indices for s in stamped)]))
        history = tune(model, unlearn, list(model.parameters()), epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                       evaluator=evaluator, seed=seed, progress=progress, desc="nc")
        return history, extra

    (history, extra), seconds = timed(run)
    if not history and evaluator is not None:  # nothing flagged: the victim as it was
        history = [{"epoch": 0, **evaluator(model)}]
    return Defended(model.eval(), "nc", params, seconds, history, extra)
