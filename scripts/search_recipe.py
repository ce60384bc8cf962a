"""Try victim-training recipes for a profile and print one Markdown row per trial.

Each trial is a zoo request with the profile's recipe (and width) overridden, so a trial is
trained once and the recipe finally chosen for the profile reuses its trial's victim.  Run
trials one at a time on a machine with nothing else running if the minutes are to mean
anything.

    python scripts/search_recipe.py --attack badnets --rate 0.01 \\
        --trial '{"epochs": 14, "lr": 0.1, "schedule": "onecycle"}' \\
        --trial '{"width": 16, "epochs": 14, "batch_size": 256, "lr": 0.2, "schedule": "onecycle"}'

A trial is a JSON object of ``Recipe`` fields, plus ``width`` (the model's) and ``train_size``
(training images; default all that the reserve leaves).  ``PURIFY_PRECISION=fp32`` runs the
trials in fp32, to compare with bf16 on the same recipe.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

from purify_lib.cli import invoke
from purify_lib.errors import PurifyError
from purify_lib.profiles import get_profile
from purify_lib.train import Recipe
from purify_lib.zoo import get_victim


def parse_trial(text: str, base) -> dict:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PurifyError(f"--trial {text!r} is not JSON ({exc.msg}); give an object of Recipe fields, width and train_size") from None
    if not isinstance(fields, dict):
        raise PurifyError(f"--trial {text!r} is not a JSON object; give an object of Recipe fields, width and train_size")
    profile_fields = {"width": fields.pop("width", base.width), "train_size": fields.pop("train_size", base.train_size)}
    allowed = set(Recipe.__dataclass_fields__)
    unknown = set(fields) - allowed
    if unknown:
        raise PurifyError(f"--trial has unknown field(s) {', '.join(sorted(unknown))}; "
                          f"allowed: width, train_size, {', '.join(sorted(allowed))}")
    return {**profile_fields, "recipe": replace(base.recipe, **fields)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="victim-recipe trials, one Markdown row each")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--attack", default="badnets")
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--trial", action="append", required=True, help="JSON object of Recipe fields, width and train_size")
    args = parser.parse_args(argv)
    base = get_profile(args.profile)
    trials = [parse_trial(text, base) for text in args.trial]  # every trial checked before the first trains
    print("| attack | rate | width | images | epochs | batch | lr | schedule | warmup | seed | precision | ACC | ASR | minutes | threads | cached |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for trial in trials:
        victim = get_victim(args.attack, args.rate, base, progress=False, **trial)
        recipe, metrics = trial["recipe"], victim.metrics
        record = victim.record
        print(f"| {args.attack} | {args.rate:g} | {trial['width']} | {record['train_images']} | {recipe.epochs} | {recipe.batch_size} | "
              f"{recipe.lr:g} | {recipe.schedule} | {recipe.warmup_fraction:g} | {recipe.seed} | {record['config']['precision']} | "
              f"{metrics['acc']:.1f} | {metrics['asr']:.1f} | {record['train_seconds'] / 60:.1f} | {record['versions'].get('threads', '?')} | "
              f"{'yes' if victim.cache_hit else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    invoke(main)
