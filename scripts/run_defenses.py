"""Run every defense (or a chosen few) against zoo victims; print ACC, ASR, DER and wall time.

    python scripts/run_defenses.py --profile cpu badnets:0.1 blended:0.01 --defenses ft fst nft d3

Victims come from the zoo (trained there first if missing).  The table printed is
Markdown; ``figures/defenses_<profile>.csv`` gets the same rows.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from purify_lib.cli import parse_specs, invoke
from purify_lib.defend import defend
from purify_lib.defenses import DEFENSES
from purify_lib.errors import choose
from purify_lib.metrics import Evaluator, der
from purify_lib.profiles import PROFILES, default_profile_name, get_profile

DEMO = ["badnets:0.1", "blended:0.1", "wanet:0.1", "badnets:0.01", "blended:0.01"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("victims", nargs="*", default=DEMO, help="ATTACK:RATE pairs (default: the demo set)")
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES), help=f"any of {', '.join(DEFENSES)}")
    parser.add_argument("--profile", default=default_profile_name(), help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="figures")
    args = parser.parse_args(argv)
    specs = parse_specs(args.victims)
    for name in args.defenses:
        choose("defense", name, DEFENSES)
    profile = get_profile(args.profile)

    from purify_lib.zoo import check_requests, get_victim

    check_requests(specs, profile)

    rows = []
    header = "| victim | defense | ACC | ASR | RA | DER | seconds | x FT | note |"
    print(header + "\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for attack, rate in specs:
        victim = get_victim(attack, rate, profile, device=args.device)
        before = victim.metrics
        label = f"{attack} {rate:g}"
        print(f"| {label} | (none) | {before['acc']:.1f} | {before['asr']:.1f} | {before['ra']:.1f} | | | | |", flush=True)
        rows.append({"victim": label, "defense": "none", **before, "der": None, "seconds": None, "relative_time": None, "note": ""})
        if not victim.backdoored:  # nothing to purify: say so instead of reporting a meaningless DER
            print(f"| {label} | skipped: the backdoor was not learned (ASR {before['asr']:.1f}%) | | | | | | | |", flush=True)
            continue
        ft_seconds = None
        evaluator = Evaluator(victim.splits.test, victim.attack)
        for name in args.defenses:
            result = defend(victim, name, profile, evaluate=False)  # per-epoch curves are the notebooks' job
            after = evaluator(result.model)
            if name == "ft":
                ft_seconds = result.seconds
            relative = result.seconds / ft_seconds if ft_seconds else None
            note = f"{result.extra['kept_poisoned']} of {result.extra['kept']} kept were poisons" if "kept_poisoned" in result.extra else ""
            row = {"victim": label, "defense": name, "acc": after["acc"], "asr": after["asr"], "ra": after["ra"],
                   "der": der(before, after), "seconds": result.seconds, "relative_time": relative, "note": note}
            rows.append(row)
            print(f"| {label} | {name} | {row['acc']:.1f} | {row['asr']:.1f} | {row['ra']:.1f} | {row['der']:.3f} | "
                  f"{row['seconds']:.0f} | {'' if relative is None else f'{relative:.1f}'} | {note} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"defenses_{profile.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwritten to {out / f'defenses_{profile.name}.csv'}")
    return 0


if __name__ == "__main__":
    invoke(main)
