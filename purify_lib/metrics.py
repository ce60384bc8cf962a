"""Clean accuracy (ACC), attack success rate (ASR), robust accuracy (RA) and DER, in one place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import ImageSet, to_float
from .precision import autocast
from .seeds import stream


def pick_device(device=None) -> torch.device:
    """``device`` as given, else CUDA when present, else the CPU.  On CUDA it also turns on what every
    run there wants: cuDNN's autotuner (the shapes repeat every batch) and TF32 for the fp32 parts
    (I-BAU's hypergradients, LC's PGD, IAD's and SSBA's networks)."""
    chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else torch.device(device)
    if chosen.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matrix products
        torch.backends.cudnn.allow_tf32 = True
    return chosen


# Images per forward pass when evaluating.  250, not 1000: on a 2-core AMD EPYC (AVX-512 BF16) a width-16
# PreAct-ResNet18 in bf16 infers about 4,600 img/s at 250 or 500 against 3,000-3,250 at 1000, whose activations
# overflow the caches; every defense run evaluates some 40,000 images (docs/measurement_log.md).
EVAL_BATCH = 250


@torch.inference_mode()
def logits(model, images: torch.Tensor, batch_size: int = EVAL_BATCH, precision: str | None = None) -> torch.Tensor:
    """Float logits for uint8 images, computed on the model's device (under ``precision``'s
    autocast), returned in fp32 where the images are (so they meet their labels there)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_float(images[start : start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            outputs.append(model(batch).float().to(images.device))
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def predict(model, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Predicted labels for uint8 images, on the model's device, returned where the images are."""
    if len(images) == 0:
        return torch.empty(0, dtype=torch.long, device=images.device)
    return logits(model, images, batch_size).argmax(1)


def triggered_test_set(test: ImageSet, attack) -> ImageSet:
    """Triggered copies of the test images whose true label is not the target, with their TRUE labels.

    ASR is measured on this set against the target label; RA against the true labels.
    """
    keep = torch.nonzero(test.labels != attack.target).squeeze(1)
    others = test.subset(keep)
    return ImageSet(attack.apply(others.images), others.labels, others.indices)


def evaluate(model, test: ImageSet, attack=None, triggered: ImageSet | None = None,
             precision: str | None = None) -> dict[str, float]:
    """ACC and mean clean cross-entropy on ``test``; with an attack, also ASR, RA (percent) and the
    backdoor loss on its triggered non-target images.

    The backdoor loss is the cross-entropy of triggered images against their TRUE labels: NFT's
    "ideal purification loss" (Sec. 4.1) and D3's backdoor loss (Fig. 2).  Pass ``triggered``
    (from ``triggered_test_set``) to avoid re-applying the trigger on every call.
    """
    clean = logits(model, test.images, precision=precision)
    result = {"acc": 100 * (clean.argmax(1) == test.labels).float().mean().item(),
              "clean_loss": F.cross_entropy(clean, test.labels).item()}
    if attack is not None or triggered is not None:
        triggered = triggered if triggered is not None else triggered_test_set(test, attack)
        target = attack.target if attack is not None else 0
        backdoor = logits(model, triggered.images, precision=precision)
        preds = backdoor.argmax(1)
        result["asr"] = 100 * (preds == target).float().mean().item()
        result["ra"] = 100 * (preds == triggered.labels).float().mean().item()
        result["backdoor_loss"] = F.cross_entropy(backdoor, triggered.labels).item()
    return result


def der(before: dict, after: dict) -> float:
    """Defense effectiveness rating: ``(max(0, dASR) - max(0, dACC) + 1) / 2`` with drops as fractions."""
    asr_drop = (before["asr"] - after["asr"]) / 100
    acc_drop = (before["acc"] - after["acc"]) / 100
    return (max(0.0, asr_drop) - max(0.0, acc_drop) + 1) / 2


class Evaluator:
    """ACC/ASR/RA of any model on one test set, with the triggered set built once.

    ``progress_size``: an evaluation a training loop makes along the way (``final=False``) uses
    only ``progress_size`` test images and triggered images, a seeded random share of each (not the
    first ones, as before: the test set is stored class by class, so those were two classes), so that a curve costs a
    fraction of the final numbers, which always use every test image.  ``None``: all, always.
    """

    def __init__(self, test: ImageSet, attack=None, progress_size: int | None = None, triggered: ImageSet | None = None):
        self.test, self.attack = test, attack
        # ``triggered``: the set already built (``Victim.triggered_test`` keeps one), so no call rebuilds it
        self.triggered = triggered if triggered is not None else triggered_test_set(test, attack) if attack is not None else None
        self.quick = None
        if progress_size is not None and progress_size < len(test):
            share = lambda images: images.subset(  # noqa: E731
                torch.randperm(len(images), generator=stream("progress-eval", len(images)))[:progress_size].sort().values)
            self.quick = (share(test), share(self.triggered) if self.triggered is not None else None)

    def __call__(self, model, final: bool = True) -> dict[str, float]:
        self._move_to(next(model.parameters()).device)
        test, triggered = (self.test, self.triggered) if final or self.quick is None else self.quick
        return evaluate(model, test, self.attack, triggered)

    def _move_to(self, device) -> None:
        """Hold the test images (and their triggered and quick copies) on the model's device, moved once."""
        if self.test.images.device == device:
            return
        move = lambda images: images.to(device) if images is not None else None  # noqa: E731
        self.test, self.triggered = move(self.test), move(self.triggered)
        if self.quick is not None:
            self.quick = (move(self.quick[0]), move(self.quick[1]))
