"""SAU, Shared Adversarial Unlearning (Wei et al., NeurIPS 2023).

Adversarial examples that fool the purified model *and* the backdoored one the same way stand in
for poisoned samples; unlearning them breaks the backdoor.  Each batch:

1. a per-sample L-infinity perturbation ``delta`` (radius ``eps`` = 0.2, starting at ``+eps``)
   takes ``pgd_steps`` = 5 signed steps of ``pgd_lr`` = 0.2 that *minimise*
   ``beta1 * L_adv + beta2 * L_js`` (beta 0.01 and 1): ``L_adv`` is minus the cross-entropy, on the
   samples either model still classifies as it does without ``delta``, and ``L_js`` the
   Jensen-Shannon divergence between the two models' predictions on the samples whose attack is
   not yet shared (Sec. 4, the shared adversarial risk's upper bound);
2. the model takes one step on ``lmd1 * CE(f(x), y) + lmd2 * CE(f(x + delta), y) + lmd3 * L_sh``
   with ``L_sh = -mean log(1 - p(y_ref | x + delta))`` over the samples the backdoored model labels
   neither ``y`` nor as it labels ``x`` (``y_ref`` its label on ``x + delta``): the shared adversarial
   examples are unlearned.

Defaults are BackdoorBench's ``defense/sau.py`` (the official code) and its CIFAR-10 config: Adam
lr 1e-4 (amsgrad, constant: its scheduler is never stepped), batch 256, 100 rounds over the 5%
clean data without augmentation, the model in eval mode (BatchNorm statistics frozen), lmd 1, 0,
1.  As there, ``delta`` is not clipped to the image range.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .base import Defended, defense, timed, tune


def _js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample Jensen-Shannon divergence of two probability rows."""
    p, q = p.clamp_min(1e-8), q.clamp_min(1e-8)
    m = (p + q) / 2
    return ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)) / 2


def shared_perturbation(model, reference, x, y, eps, steps, step_size, beta1, beta2) -> torch.Tensor:
    """SAU step 1: a perturbation ``delta`` that both models misclassify alike."""
    with torch.no_grad():
        clean_pred, clean_ref = model(x).argmax(1), reference(x).argmax(1)
    delta = torch.full_like(x, eps)
    # Sums over masks are products with them, not boolean indexing, and there is no early exit once every sample's
    # attack is shared (BackdoorBench's ``break``): both would wait for the GPU every step.  Once every attack is
    # shared both terms are zero, so is their gradient, and the remaining steps leave ``delta`` as it is.
    for _ in range(steps):
        delta.requires_grad_(True)
        out, out_ref = model(x + delta).float(), reference(x + delta).float()
        pred, pred_ref = out.argmax(1), out_ref.argmax(1)
        fooled, fooled_ref = pred != clean_pred, pred_ref != clean_ref
        shared = fooled & fooled_ref & (pred == pred_ref)
        loss_adv = -((F.cross_entropy(out, y, reduction="none") * ~fooled).sum()
                     + (F.cross_entropy(out_ref, y, reduction="none") * ~fooled_ref).sum()) / (2 * len(x))
        loss_js = (_js(out.softmax(1), out_ref.softmax(1)) * ~shared).sum() / len(x)
        (grad,) = torch.autograd.grad(beta1 * loss_adv + beta2 * loss_js, delta)
        delta = (delta.detach() - step_size * grad.sign()).clamp(-eps, eps)
    return delta.detach()


@defense(published={"SAU"}, smoke={"epochs": 1},
          cpu=({"epochs": 5}, "5 of its 100 rounds: each step is 5 PGD steps through two models and an update, about 13 passes of a batch"),
          tests={"epochs": 1})
def sau(model, data, evaluator=None, *, epochs=100, lr=1e-4, batch_size=256, eps=0.2, pgd_steps=5, pgd_lr=0.2, beta1=0.01,
        beta2=1.0, lmd1=1.0, lmd2=0.0, lmd3=1.0, seed=0, progress=False) -> Defended:
    """Shared adversarial unlearning (SAU Alg. 1)."""
    params = dict(epochs=epochs, lr=lr, batch_size=batch_size, eps=eps, pgd_steps=pgd_steps, pgd_lr=pgd_lr, beta1=beta1,
                  beta2=beta2, lmd1=lmd1, lmd2=lmd2, lmd3=lmd3, seed=seed)
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    model = copy.deepcopy(model)

    def sau_step(net, x, y, optimizer, loss_fn):
        net.eval()  # BackdoorBench's SAU trains in eval mode: BatchNorm statistics stay the victim's
        delta = shared_perturbation(net, reference, x, y, eps, pgd_steps, pgd_lr, beta1, beta2)
        with torch.no_grad():
            ref_adv, ref_clean = reference(x + delta).argmax(1), reference(x).argmax(1)
        out, out_adv = net(x).float(), net(x + delta).float()
        loss = lmd1 * F.cross_entropy(out, y) + (lmd2 * F.cross_entropy(out_adv, y) if lmd2 else 0.0)
        shared = (ref_adv != y) & (ref_adv != ref_clean)
        p_ref = out_adv.softmax(1).gather(1, ref_adv[:, None]).squeeze(1)
        loss = loss - lmd3 * (torch.log((1 - p_ref).clamp(1e-6, 0.999)) * shared).sum() / len(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    history, seconds = timed(lambda: tune(model, data, list(model.parameters()), epochs=epochs, lr=lr, batch_size=batch_size,
                                          optimizer="adam", schedule="constant", step_fn=sau_step, augment_data=False,
                                          evaluator=evaluator, seed=seed, progress=progress, desc="sau"))
    return Defended(model.eval(), "sau", params, seconds, history)
