"""Measurements the notebooks plot: penultimate features and their t-SNE, how separable the
backdoor's features stay, models along a straight line in weight space, and weight changes.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .data import ImageSet, to_float
from .metrics import evaluate
from .seeds import stream


@torch.no_grad()
def penultimate(model, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """The features the linear head sees, for uint8 images."""
    device = next(model.parameters()).device
    model.eval()
    chunks = [model.features(to_float(images[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy()


def feature_groups(victim, per_group: int = 300, seed: int = 0) -> dict[str, ImageSet]:
    """The three groups of FST Fig. 3: clean target-class images, triggered images, other classes."""
    test, target = victim.splits.test, victim.attack.target
    generator = stream("feature-groups", seed)

    def take(indices):
        return indices[torch.randperm(len(indices), generator=generator)[:per_group]]

    target_idx = torch.nonzero(test.labels == target).squeeze(1)
    other_idx = torch.nonzero(test.labels != target).squeeze(1)
    triggered = victim.triggered_test()
    return {"clean target": test.subset(take(target_idx)), "triggered": triggered.subset(take(torch.arange(len(triggered)))),
            "other classes": test.subset(take(other_idx))}


def separation(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Silhouette score of two feature groups: near 0 when they share one region (the backdoor's
    features entangled with the clean target class), towards 1 when they sit apart.

    (A linear probe is no measure here: in 100+ dimensions it separates 400 points of almost
    any two groups, and scored 99-100% on every model we tried.)
    """
    from sklearn.metrics import silhouette_score

    x = np.concatenate([features_a, features_b])
    y = np.concatenate([np.zeros(len(features_a)), np.ones(len(features_b))])
    return float(silhouette_score(x, y))


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE embedding (scikit-learn, PCA initialisation, perplexity 30 or less)."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(features) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def interpolate(start: torch.nn.Module, end: torch.nn.Module, t: float) -> torch.nn.Module:
    """``start + t * (end - start)`` for every parameter and float buffer (BatchNorm statistics too).

    BatchNorm running variances move geometrically, ``start * (end / start) ** t``: the same
    endpoints, but beyond ``t = 1`` a linear step can turn a variance negative (the normalised
    activations, and every loss, become NaN), and a variance is a scale, not a location.
    """
    model = copy.deepcopy(start)
    ends = dict(end.state_dict())
    state = {}
    for name, value in start.state_dict().items():
        if not value.is_floating_point():
            state[name] = value
        elif name.endswith("running_var"):
            # Floored so a dead channel's zero variance cannot turn the ratio into inf or NaN.
            floor = torch.finfo(value.dtype).tiny
            state[name] = torch.exp((1 - t) * value.clamp_min(floor).log() + t * ends[name].clamp_min(floor).log())
        else:
            state[name] = value + t * (ends[name] - value)
    model.load_state_dict(state)
    return model.eval()


def weight_path(start, end, ts, test: ImageSet, attack, triggered=None) -> list[dict]:
    """ACC, ASR and the clean and backdoor losses along ``start + t (end - start)`` (D3 Fig. 2)."""
    return [{"t": float(t), **evaluate(interpolate(start, end, float(t)), test, attack, triggered)} for t in ts]


def weight_change(before: torch.nn.Module, after: torch.nn.Module, layers=None) -> np.ndarray:
    """All elementwise weight differences ``after - before`` (of the named parameters, or all)."""
    old = dict(before.named_parameters())
    chunks = [(p.detach() - old[name].detach()).flatten().cpu() for name, p in after.named_parameters()
              if name in old and (layers is None or any(name.startswith(layer) for layer in layers))]
    return torch.cat(chunks).numpy()
