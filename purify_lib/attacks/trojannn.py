"""TrojanNN (Liu et al., "Trojaning attack on neural networks", NDSS 2018), all-to-one ("Troj-one").

A trigger inside a fixed mask is optimised, on a clean model, to drive a few selected internal
neurons to a high value; then the victim is trained on data poisoned with that trigger.

- Neurons: the ``num_neurons`` = 2 penultimate features (inputs of the final linear layer) with the
  largest summed absolute weight to that layer, the paper's "most connected" rule.  BackdoorBench
  (``attack/trojannn.py``) builds the pretrained model with 1000 classes, so its linear layer keeps
  its random initialisation and the choice is random; here the clean model's trained head is used.
- Trigger: pixels inside the mask (default a 10 x 10 square at the bottom right, about the area of
  BackdoorBench's apple mask, ``apple4.png``, which is not shipped here; ``mask_path`` takes any
  image, non-zero pixels forming the mask) start black; ``steps`` = 1000 signed-gradient steps of
  ``step_size`` 0.1 minimise ``sum_i (feature_i - target_value)^2`` (``target_value`` 100) on the
  trigger alone on a black image, each step clipped to ``[0, eps]`` with ``eps`` 0.3; it stops early
  when the cost falls under 1e-3.  All as in BackdoorBench's ``trojannn`` config.
- Poisoning: the trigger is *added* to the image (BackdoorBench's ``np.clip(trigger + img)``, which
  casts to uint8 before clipping and so wraps; here the sum saturates at 255), and the poisons are
  relabelled to the target, BackdoorBench's ``pratio`` 0.1 by default.

The optimised trigger is learned state: the zoo stores it beside the victim (``state_dict``).
"""
from __future__ import annotations

import torch

from ..errors import PurifyError
from .base import Attack, find_trigger, load_pattern


def corner_square(size: int = 32, side: int = 10) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, size - side - 2 : size - 2, size - side - 2 : size - 2] = True
    return mask


class TrojanNN(Attack):
    name = "trojannn"
    published = frozenset({"Troj-one"})
    needs_clean_model = True
    model_eps = 0.0  # the zoo's plain clean model, not an adversarially trained one

    def __init__(self, *, target: int = 0, num_neurons: int = 2, target_value: float = 100.0, steps: int = 1000,
                 step_size: float = 0.1, eps: float = 0.3, mask_path=None, pool: str = "all"):
        super().__init__(target=target, pool=pool)
        if num_neurons < 1 or steps < 1 or not 0 < eps <= 1:
            raise PurifyError(f"trojannn needs num_neurons >= 1, steps >= 1 and eps in (0, 1]; got {num_neurons}, {steps}, {eps}")
        self.num_neurons, self.target_value, self.steps, self.step_size, self.eps = num_neurons, target_value, steps, step_size, eps
        path = find_trigger("", mask_path) if mask_path is not None else None
        self.mask = torch.from_numpy(load_pattern(path)).amax(0, keepdim=True).gt(0) if path else corner_square()
        self.clean_model = None
        self.trigger: torch.Tensor | None = None  # uint8 (3, 32, 32), zero outside the mask
        self.neurons: torch.Tensor | None = None

    def prepare(self, train, device) -> None:
        if self.trigger is not None:
            return
        if self.clean_model is None:
            raise PurifyError("trojannn optimises its trigger on a clean model: set attack.clean_model (the victim zoo does)")
        self.trigger, self.neurons = optimise_trigger(self.clean_model, self.mask, self.num_neurons, self.target_value,
                                                      self.steps, self.step_size, self.eps)

    def state_dict(self) -> dict:
        return {"trigger": self.trigger, "neurons": self.neurons} if self.trigger is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.trigger, self.neurons = state["trigger"], state["neurons"]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        if self.trigger is None:
            raise PurifyError("trojannn has no trigger yet: it is optimised when the zoo trains the victim (attack.prepare)")
        return (images.int() + self.trigger.to(images.device).int()).clamp(0, 255).to(torch.uint8)


def optimise_trigger(model, mask: torch.Tensor, num_neurons: int, target_value: float, steps: int, step_size: float,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The trigger (uint8, zero outside ``mask``) driving the ``num_neurons`` most connected penultimate
    features of ``model`` towards ``target_value``, and the indices of those features."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    neurons = model.head.weight.detach().abs().sum(0).topk(num_neurons).indices
    keep = mask.to(device).float()[None]
    trigger = torch.zeros(1, 3, *mask.shape[1:], device=device)
    for _ in range(steps):
        trigger.requires_grad_(True)
        cost = ((model.features(trigger * keep)[:, neurons] - target_value) ** 2).sum()
        if cost.item() < 1e-3:
            break
        (grad,) = torch.autograd.grad(cost, trigger)
        trigger = (trigger.detach() - step_size * grad.sign()).clamp(0, eps)
    model.train(was_training)
    return (trigger.detach()[0] * keep[0] * 255).round().to(torch.uint8).cpu(), neurons.cpu()
