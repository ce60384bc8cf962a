"""I-BAU, Implicit Backdoor Adversarial Unlearning (Zeng et al., ICLR 2022).

A minimax problem (Eq. 3): the inner step finds one universal perturbation ``delta`` that
most raises the loss, ``min_delta -CE(f(x + delta), y) + 0.001 ||delta||^2``; the outer
step trains the model on the data with ``delta`` applied, through the implicit
hypergradient of the inner fixed point ``delta = Phi(delta) = delta - 0.1 grad_delta L_in``
(K-step Neumann / fixed-point iteration, Alg. 1).  As in both reference codes, the inner
step raises the loss against the model's own predictions, not the true labels.  Defaults: 5
rounds, K 5, SGD lr 10 inward, 1% of each batch perturbed, eval mode, and BackdoorBench's
outer Adam lr 1e-4 (amsgrad).  The authors' code uses lr 1e-3; on the cpu BadNets-10% victim
that took ACC from 74% to 10% (lr 1e-4: 67%, with ASR 0.1%), so it is reachable, not default.
The perturbation lives in raw [0, 1] pixels, as in the authors' code (the model normalises).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..data import to_float
from ..seeds import stream
from .base import Defended, defense, timed


@defense(published={"I-BAU", "i-BAU"}, smoke={"rounds": 1}, cpu=({"rounds": 3}, "3 of its 5 rounds, about a minute at width 16"), tests={"rounds": 1, "fixed_point_steps": 2})
def ibau(model, data, evaluator=None, *, rounds=5, fixed_point_steps=5, lr=1e-4, inner_lr=10.0, portion=0.01,
         batch_size=128, seed=0, progress=False) -> Defended:
    """Implicit-hypergradient adversarial unlearning (I-BAU Alg. 1)."""
    params = dict(rounds=rounds, fixed_point_steps=fixed_point_steps, lr=lr, inner_lr=inner_lr, portion=portion,
                  batch_size=batch_size, seed=seed)
    model = copy.deepcopy(model).eval()  # BatchNorm statistics stay as they are, as in the official code
    device = next(model.parameters()).device
    generator = stream("ibau-patch", seed)
    images, labels = data.images.to(device), data.labels.to(device)
    batches = [(to_float(images[i : i + batch_size]), labels[i : i + batch_size]) for i in range(0, len(labels), batch_size)]
    weights = list(model.parameters())
    outer = torch.optim.Adam(weights, lr=lr, amsgrad=True)
    history = [{"epoch": 0, **evaluator(model, final=False)}] if evaluator is not None else []

    def inner_loss(delta, x, y):
        return -F.cross_entropy(model(x + delta), y) + 0.001 * delta.pow(2).sum()

    def outer_loss(delta, x, y):
        chosen = torch.randperm(len(x), generator=generator)[: max(1, int(len(x) * portion))].to(device)
        patch = torch.zeros_like(x)
        patch[chosen] = delta[0]
        return F.cross_entropy(model(x + patch), y)

    def run():
        for round_index in range(1, rounds + 1):
            delta = torch.zeros(1, *batches[0][0].shape[1:], device=device, requires_grad=True)
            inner_opt = torch.optim.SGD([delta], lr=inner_lr)
            for x, _ in batches:  # the inner maximisation, one pass, against the model's own predictions
                with torch.no_grad():
                    predicted = model(x).argmax(1)
                inner_opt.zero_grad()
                inner_loss(delta, x, predicted).backward()
                inner_opt.step()
            delta = delta.detach().requires_grad_(True)
            first_x, first_y = batches[0]  # the fixed point is taken on the first batch, true labels (as both codes)
            for x, y in batches:
                grad_inner = torch.autograd.grad(inner_loss(delta, first_x, first_y), delta, create_graph=True)[0]
                phi = delta - 0.1 * grad_inner
                loss = outer_loss(delta, x, y)
                grad_delta, *grad_weights = torch.autograd.grad(loss, [delta, *weights], allow_unused=True)
                v = torch.zeros_like(grad_delta)
                for _ in range(fixed_point_steps):  # v <- (dPhi/ddelta)^T v + dL/ddelta: K Neumann terms
                    v = torch.autograd.grad(phi, delta, grad_outputs=v, retain_graph=True)[0] + grad_delta
                indirect = torch.autograd.grad(phi, weights, grad_outputs=v, allow_unused=True)
                outer.zero_grad(set_to_none=True)
                for w, direct, implicit in zip(weights, grad_weights, indirect):
                    total = (direct if direct is not None else 0) + (implicit if implicit is not None else 0)
                    w.grad = total if torch.is_tensor(total) else None
                outer.step()
            if evaluator is not None:
                history.append({"epoch": round_index, "loss": loss.item(), **evaluator(model, final=round_index == rounds)})

    _, seconds = timed(run)
    return Defended(model.eval(), "ibau", params, seconds, history)
