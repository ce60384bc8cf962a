"""Victims x defenses x settings as one tidy table: the loop every notebook section runs, written once.

``sweep(section, victims, arms)`` gives one row per victim (``defense == "none"``: the victim as the zoo
trained it) and one per (victim, arm), each with ACC, ASR, RA (%), DER, wall seconds and the time
relative to FT on the same victim; ``beside_published`` sets the papers' cells beside those rows.
An arm is a defense name, or a dict ``{"defense": name, "params": {...}, **labels}``: the labels
become columns, and so does every parameter the arm sets.
"""
from __future__ import annotations

import pandas as pd

from .metrics import der
from .plots import victim_label

METRICS = ["acc", "asr", "ra", "der", "seconds"]


def arm(defense: str, name: str | None = None, show: bool = True, **params) -> dict:
    """An arm of a sweep: ``defense`` with ``params``, each one a column of its rows unless ``show`` is off;
    ``name`` replaces the defense's name in the ``defense`` column (a configuration of its own)."""
    return {"defense": defense, "params": params, **({"name": name} if name else {}), **({} if show else {"show": False})}


def victim_row(victim, **labels) -> dict:
    """The row of a victim before any defense."""
    m = victim.metrics
    return {"attack": victim.attack.name, "rate": victim.poison_rate, "victim": victim_label(victim), "backdoored": victim.backdoored,
            **labels, "defense": "none", "acc": m["acc"], "asr": m["asr"], "ra": m["ra"], "der": None, "seconds": None}


def result_row(victim, result, **labels) -> dict:
    """The row of one defense run on ``victim``: its final ACC/ASR/RA, DER against the victim, wall seconds."""
    after = result.history[-1]
    return {**victim_row(victim, **labels), "defense": result.method, "acc": after["acc"], "asr": after["asr"], "ra": after["ra"],
            "der": der(victim.metrics, after), "seconds": result.seconds}


def sweep(section, victims, arms, *, baseline: bool = True, extra: dict | None = None, seeds=None, **labels) -> pd.DataFrame:
    """Every arm on every victim through ``section.defend`` (cached), one row each, after each victim's own row
    (``baseline``); ``labels`` go on every row.  ``victims``: zoo victims, or ``(attack, rate)`` specs;
    ``arms``: a list, or a function of the victim giving its list; ``extra``: column -> key of the result's
    ``extra`` to show (PAD's ``kept_poisoned``).  With several defense ``seeds`` each arm runs once per seed and
    its row holds the means, their standard deviations (``acc ±``, ``asr ±``, ``der ±``) and the count."""
    rows = []
    for victim in victims:
        victim = section.victim(*victim) if isinstance(victim, tuple) else victim
        if baseline:
            rows.append(victim_row(victim, **labels))
        for entry in arms(victim) if callable(arms) else arms:
            entry = arm(entry) if isinstance(entry, str) else entry
            columns = {k: v for k, v in entry.items() if k not in ("defense", "params", "name", "show")}
            params = entry.get("params", {})
            runs = [section.defend(victim, entry["defense"], **params, **({"seed": seed} if seeds else {})) for seed in seeds or [None]]
            result = runs[0]
            row = {**result_row(victim, result, **labels, **columns), **{column: result.extra.get(key) for column, key in (extra or {}).items()},
                   **(params if entry.get("show", True) else {})}
            if len(runs) > 1:
                each = pd.DataFrame([result_row(victim, run) for run in runs])
                row.update({**each[METRICS].mean().to_dict(), **{f"{m} ±": each[m].std(ddof=1) for m in ("acc", "asr", "der")}, "seeds": len(runs)})
            rows.append({**row, "defense": entry.get("name", row["defense"])})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # FT's time on the same victim (its first run there) as the unit
    plain_ft = frame[(frame["defense"] == "ft")].drop_duplicates("victim").set_index("victim")["seconds"]
    frame["time vs FT"] = [s / plain_ft[v] if s and v in plain_ft.index else None for v, s in zip(frame["victim"], frame["seconds"])]
    return frame


def by_trigger_set(section, specs, sets: list[str]) -> dict:
    """Each trigger set's victims (``attacks.TRIGGER_SETS``): ``{set: [victim, ...]}`` for ``(attack, rate)``
    ``specs``; an attack with one version (no set names it) appears once, under the first set."""
    from .attacks import TRIGGER_SETS
    from .errors import choose

    for name in sets:  # every name checked before any victim trains
        choose("trigger set", name, TRIGGER_SETS)
    chosen, seen = {}, set()
    for name in sets:
        for attack, rate in specs:
            params = TRIGGER_SETS[name].get(attack, {})
            if (attack, rate, str(params)) not in seen:
                seen.add((attack, rate, str(params)))
                chosen.setdefault(name, []).append(section.victim(attack, rate, **params))
    return chosen


def backdoored(frame: pd.DataFrame) -> pd.DataFrame:
    """The defense rows of victims whose backdoor was learned (ASR >= the zoo's bound before any defense)."""
    return frame[frame["backdoored"].astype(bool) & (frame["defense"] != "none")]


def wide(frame: pd.DataFrame, by: str, columns: str = "defense", metrics=("acc", "asr"), order=None) -> pd.DataFrame:
    """One row per value of ``by`` (a victim, say), one column per (``columns`` value, metric): ``ft ASR``."""
    order = order or list(dict.fromkeys(frame[columns]))
    grid = frame.pivot_table(index=by, columns=columns, values=list(metrics), sort=False)
    grid = grid.reindex(columns=[(m, c) for c in order for m in metrics])
    grid.columns = [f"{c} {m.upper()}" for m, c in grid.columns]
    return grid.reset_index()


def per(frame: pd.DataFrame, by: str, metric: str, how: str = "mean") -> dict:
    """``metric`` aggregated (``how``: mean, min, max...) per value of ``by``, in sorted order: ``{value: number}``."""
    return frame.groupby(by)[metric].agg(how).to_dict()


def means(frame: pd.DataFrame, by: str = "defense", metrics=("acc", "asr", "ra", "der", "seconds", "time vs FT")) -> pd.DataFrame:
    """The mean of each metric per value of ``by``, in the order they first appear."""
    present = [m for m in metrics if m in frame]
    return frame.groupby(by, sort=False)[present].mean().reset_index()


def with_averages(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """``frame`` and, below it, the means of its backdoored victims' defense rows per defense, ``label`` as their attack."""
    averages = means(backdoored(frame))
    averages.insert(0, "attack", label)
    return pd.concat([frame, averages], ignore_index=True)


def beside_published(frame: pd.DataFrame, tables: pd.DataFrame, profile, note=None) -> pd.DataFrame:
    """``frame``'s ACC/ASR with each paper's published cell for the same attack, rate and defense beside it
    (one row per paper table), and what differs between the configurations (``paper_tables.configuration_note``;
    ``note(paper, defense)`` gives the run-specific budget cut, if any)."""
    from . import paper_tables
    from .datasets import get_spec

    published = []
    for (attack, rate), defenses in frame.groupby(["attack", "rate"], sort=False)["defense"]:
        for name in dict.fromkeys(defenses):
            for row in paper_tables.published(tables, attack, rate, name, get_spec(profile.dataset).published).itertuples():
                compared = paper_tables.compared_run(row.paper, name)
                published.append({"attack": attack, "rate": rate, "defense": compared, "source": f"{row.paper} Table {row.table} ({row.model})",
                                  "published ACC": getattr(row, "ACC", None), "published ASR": getattr(row, "ASR", None),
                                  "configuration": paper_tables.configuration_note(row.paper, name, profile, note(row.paper, compared) if note else None)})
    published = pd.DataFrame(published, columns=["attack", "rate", "defense", "source", "published ACC", "published ASR", "configuration"])
    ours = frame[["attack", "rate", "defense", "acc", "asr"]].rename(columns={"acc": f"ACC ({profile.name})", "asr": f"ASR ({profile.name})"})
    return ours.merge(published, on=["attack", "rate", "defense"], how="left")


def nc_detections(section, victims) -> pd.DataFrame:
    """Neural Cleanse as a detector on each victim: the classes it flags (anomaly index > 2) against the true target."""
    rows = []
    for victim in victims:
        extra = section.defend(victim, "nc").extra
        rows.append({"attack": victim.attack.name, "rate": victim.poison_rate, "backdoored": victim.backdoored, "target": victim.attack.target,
                     "flagged": extra["flagged"], "anomaly index (smallest norm)": extra["anomaly_index"],
                     "correct": extra["flagged"] == [victim.attack.target]})
    return pd.DataFrame(rows)


def rnp_thresholds(section, victims, thresholds=(0.2, 0.5, 0.7, 0.9)) -> pd.DataFrame:
    """Each backdoored victim pruned from RNP's cached masks at other thresholds (no retraining): how much of
    RNP's result is its threshold."""
    from .defenses.rnp import prune_by_masks
    from .metrics import evaluate

    rows = []
    for victim in (v for v in victims if v.backdoored):
        result = section.defend(victim, "rnp")
        for threshold in thresholds:
            pruned_model, pruned = prune_by_masks(victim.model, result.extra["masks"], threshold)
            metrics = evaluate(pruned_model, victim.splits.test, victim.attack, triggered=victim.triggered_test())
            rows.append({"attack": victim.attack.name, "rate": victim.poison_rate, "threshold": threshold, "pruned channels": pruned,
                         "acc": metrics["acc"], "asr": metrics["asr"], "default": threshold == result.params["threshold"]})
    return pd.DataFrame(rows)
