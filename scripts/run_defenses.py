"""Run every defense (or a chosen few) against zoo victims; print ACC, ASR, DER and wall time.

    python scripts/run_defenses.py --profile cpu badnets:0.1 blended:0.01 --defenses ft fst nft d3

Victims come from the zoo (trained there first if missing), defense results from the cache the notebooks
share (``sweep.sweep``, as they run it).  The table printed is Markdown; ``figures/defenses_<profile>.csv``
gets the same rows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from purify_lib.cli import invoke, parse_specs
from purify_lib.defenses import DEFENSES
from purify_lib.errors import choose
from purify_lib.profiles import PROFILES, default_profile_name, get_profile

DEMO = ["badnets:0.1", "blended:0.1", "wanet:0.1", "badnets:0.01", "blended:0.01"]
COLUMNS = ["victim", "defense", "acc", "asr", "ra", "der", "seconds", "time vs FT", "kept poisons"]


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

    from purify_lib.plots import markdown
    from purify_lib.section import Section
    from purify_lib.sweep import sweep
    from purify_lib.zoo import check_requests

    check_requests(specs, profile)
    # The notebooks' API and cache: every result here is one a notebook would load, and the reverse.
    section = Section("run_defenses", profile.name, args.device)
    tables = []
    for attack, rate in specs:  # one victim at a time, printed as it ends; a victim without its backdoor is not purified
        table = sweep(section, [(attack, rate)], lambda v: args.defenses if v.backdoored else [], extra={"kept poisons": "kept_poisoned"})
        tables.append(table.reindex(columns=COLUMNS))
        print(markdown(tables[-1]).split("\n", 2)[2] if len(tables) > 1 else markdown(tables[-1]), end="", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(tables, ignore_index=True).to_csv(out / f"defenses_{profile.name}.csv", index=False)
    print(f"\nwritten to {out / f'defenses_{profile.name}.csv'}")
    return 0


if __name__ == "__main__":
    invoke(main)
