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


def distances(victim, results: dict, label: str) -> tuple[list[dict], list[dict]]:
    """How far each purified model (``results``: method -> ``Defended``) moved from ``victim``, over the head and
    over all layers: a summary row each, and the head's per-weight changes (for their histogram)."""
    import pandas as pd

    rows, head = [], []
    for method, result in results.items():
        for layers, part in ((["head"], "head"), (None, "all layers")):
            delta = weight_change(victim.model, result.model, layers)
            if part == "head":
                head.append(pd.DataFrame({"change": delta, "method": method, "weights": part, "victim": label}))
            rows.append({"victim": label, "method": method, "weights": part, "mean |change|": float(np.abs(delta).mean()),
                         "l2 distance": float(np.linalg.norm(delta)), "asr": result.history[-1]["asr"], "acc": result.history[-1]["acc"]})
    return rows, head


def selection_purity(victim, sizes, label: str) -> tuple[list[dict], tuple[float, float]]:
    """How many poisons PAD's low-SCE selection keeps from ``victim``'s poisoned training set at each ``n_c`` of
    ``sizes`` (one row each), and the median SCE of the poisons and of the clean target-class images.  SCE is
    scored once; the selection for each ``n_c`` is then the ``n_c`` lowest per class, as PAD selects."""
    from .defenses.pad import lowest_per_class, sce_scores

    poisoned = victim.poisoned_train()
    is_poison = torch.zeros(len(poisoned.data), dtype=torch.bool)
    is_poison[poisoned.poisoned] = True
    scores, labels = sce_scores(victim.model, poisoned.data), poisoned.data.labels
    target_clean = (labels == victim.attack.target) & ~is_poison
    rows = []
    for n_c in sizes:
        kept = lowest_per_class(scores, labels, n_c)
        rows.append({"victim": label, "n_c": n_c, "N_c": len(kept), "poisons kept": int(is_poison[kept].sum()),
                     "poison share (%)": 100 * is_poison[kept].float().mean().item(),
                     "poison share in the training set (%)": 100 * is_poison.float().mean().item(),
                     "target-class slots that are poisons (%)": 100 * is_poison[kept[labels[kept] == victim.attack.target]].float().mean().item()})
    return rows, (scores[is_poison].median().item(), scores[target_clean].median().item())


def nft_curves(result, victim, run: str):
    """NFT's training loss (MixUp, L1 term included; its mean over each pass), the ideal purification loss
    (triggered test images against their true labels) and the clean test loss, against the step, as one long
    frame: ``step, loss, kind, run, victim`` and, on the ideal loss, the ASR at that point."""
    import pandas as pd

    from .defenses import DEFENSES
    from .plots import victim_label

    # a pass is over NFT's defense data, its declared share of the training set
    steps_per_pass = -(-round(DEFENSES["nft"].fraction * victim.splits.defense_base_size) // result.params["batch_size"])
    victim = victim_label(victim)
    history = pd.DataFrame(result.history)
    history["step"] = history["epoch"] * steps_per_pass
    evaluated, trained = history.dropna(subset=["backdoor_loss"]), history.dropna(subset=["loss"])
    return pd.concat([pd.DataFrame({"step": trained["step"], "loss": trained["loss"], "kind": "training loss", "run": run, "victim": victim}),
                      pd.DataFrame({"step": evaluated["step"], "loss": evaluated["backdoor_loss"], "kind": "ideal loss (triggered, true labels)",
                                    "run": run, "victim": victim, "asr": evaluated["asr"]}),
                      pd.DataFrame({"step": evaluated["step"], "loss": evaluated["clean_loss"], "kind": "clean test loss", "run": run, "victim": victim})])


def mixup_gaps(curves) -> list[tuple[str, float, float, float]]:
    """``(victim, step, training loss - ideal loss, ASR)`` at every step where both were measured."""
    gaps = []
    for victim, part in curves.groupby("victim"):
        train = part[part["kind"] == "training loss"].set_index("step")["loss"]
        ideal = part[part["kind"].str.startswith("ideal")].set_index("step")
        gaps += [(victim, step, train[step] - ideal.loc[step, "loss"], ideal.loc[step, "asr"]) for step in ideal.index.intersection(train.index)]
    return gaps


def mask_movement(masks) -> str:
    """How far NFT's masks moved from 1 (a mask at 1 leaves its channel as it was), in words; ``masks`` as its
    ``extra["masks"]`` holds them (tensors, or lists from the cache)."""
    values = torch.cat([torch.as_tensor(m).flatten() for m in masks])
    return (f"{'hardly move' if (values < 0.9).float().mean() < 0.05 else 'move'} from 1: mean {values.mean():.3f}, "
            f"{int((values < 0.9).sum())} of {len(values)} channels below 0.9, {int((values < 0.5).sum())} below 0.5")


def bound_verdict(gaps) -> str:
    """Where NFT's MixUp loss falls below the ideal loss: with the backdoor still active (mean ASR there), or not."""
    below = [asr for *_, gap, asr in gaps if gap < 0]
    above = [asr for *_, gap, asr in gaps if gap >= 0]
    mean = lambda values: sum(values) / len(values)
    return (f"mean ASR {mean(below):.1f}% at the {len(below)} evaluations where the MixUp loss is below the ideal loss, "
            + (f"{mean(above):.1f}% at the {len(above)} where it is above: " if above else "and it is never above: ")
            + ("the bound fails where the backdoor is still active" if not above or mean(below) > mean(above) else
               "the bound fails whether or not the backdoor is active"))


def nft_budget_verdict(first, default, longer, oracle) -> str:
    """Is NFT's step budget the limit (``longer``: three times the steps, against ``first``, the row of ``default``),
    did its masks move, and can the same masks remove the backdoor with the oracle's data (``oracle``'s rows)?"""
    after, removed = longer.history[-1], int((oracle["asr"] < 10).sum())
    return (f"{'the step budget' if after['asr'] < 10 else 'not the step budget alone'}: on {first.label}, {longer.params['steps']} steps give "
            f"ASR {after['asr']:.1f}%, ACC {after['acc']:.1f}% (against {first.asr:.1f}%, {first.acc:.1f}% at {longer.params['steps'] // 3}); "
            f"the masks {mask_movement(default.extra['masks'])}. With the oracle's data (triggered images, true labels) the same masks give "
            + ", ".join(f"{r.label} ASR {r.asr:.1f}%" for r in oracle.itertuples())
            + (": BatchNorm masks can remove these backdoors, so what NFT lacks is the signal, which MixUp of clean images does not supply here"
               if removed == len(oracle) else ": even the oracle removes none, so BatchNorm masks cannot remove these backdoors at this budget"
               if removed == 0 else f": the oracle removes {removed} of {len(oracle)}, so masks can remove some of these backdoors and not others"))


def seed_noise_verdict(der: dict, reseeded: dict, ablations) -> str:
    """How far full NFT's DER moves with the seed alone (``reseeded``: victim -> DER at another seed), and which
    ablations' gaps to it (``der``: (victim, variant) -> DER) sit within that."""
    noise = max(abs(d - der[(a, "NFT")]) for a, d in reseeded.items())
    within = [f"{a} {v}" for a in sorted({a for a, _ in der}) for v in ablations if abs(der[(a, "NFT")] - der[(a, v)]) <= noise]
    return (f"full NFT's DER moves by up to {noise:.3f} with the seed alone (" + ", ".join(f"{a}: {der[(a, 'NFT')]:.3f} -> {d:.3f}" for a, d in reseeded.items())
            + "); " + (f"within that noise: {', '.join(within)}" if within else "every ablation's gap exceeds it"))


def one_shot_verdict(one_shot, default: dict) -> str:
    """NFT with one clean image per class (``one_shot``'s rows) against its default data (``default``: victim -> ASR)."""
    return ("one-shot against NFT's default 1% of the training set (ASR): "
            + ", ".join(f"{r.label} {r.asr:.1f}% vs {default.get(r.label, float('nan')):.1f}%" for r in one_shot.itertuples())
            + ("; the default data does no better, so the data size is not the cause" if all(default.get(r.label, 0) >= 10 for r in one_shot.itertuples()) else ""))
