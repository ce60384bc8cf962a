"""Every claim's verdict at an earlier commit beside the one now in figures/, side by side.

    python scripts/claims_before_after.py --before 618625e > docs/claims_before_after.md

Reads ``figures/claims_<notebook>.csv`` as committed at ``--before`` (``git show``) and as it is in the
working tree now, and the ``manifest.json`` of each, which names the commit whose run wrote each file.
Claims are matched by notebook and text; a claim that only one side has is listed with the other blank.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path

import pandas as pd

from purify_lib.cli import invoke
from purify_lib.errors import PurifyError
from purify_lib.execution import notebook_names
from purify_lib.plots import markdown

ROOT = Path(__file__).resolve().parents[1]


def at_commit(revision: str, path: str) -> str | None:
    shown = subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True, text=True, cwd=ROOT)
    return shown.stdout if shown.returncode == 0 else None


def claims(text: str | None, notebook: str) -> pd.DataFrame:
    if not text:
        return pd.DataFrame(columns=["notebook", "claim", "verdict", "measured"])
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
    return frame.assign(notebook=notebook)[["notebook", "claim", "verdict", "measured"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision whose committed claims are the 'before'")
    args = parser.parse_args(argv)
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.before}^{{commit}}"], capture_output=True, cwd=ROOT).returncode:
        raise PurifyError(f"--before {args.before!r} is not a commit of this repository")
    before_manifest = json.loads(at_commit(args.before, "figures/manifest.json") or "{}")
    now_manifest = json.loads((ROOT / "figures" / "manifest.json").read_text())
    rows, made = [], []
    for notebook in notebook_names():
        file = f"claims_{notebook}.csv"
        before = claims(at_commit(args.before, f"figures/{file}"), notebook)
        now_path = ROOT / "figures" / file
        after = claims(now_path.read_text() if now_path.exists() else None, notebook)
        rows.append(before.merge(after, on=["notebook", "claim"], how="outer", suffixes=(" before", " after"), sort=False))
        made.append(f"| {notebook} | {before_manifest.get(file, {}).get('commit', '')[:7]} | {now_manifest.get(file, {}).get('commit', '')[:7]} |")
    table = pd.concat(rows, ignore_index=True).fillna("")
    table = table[["notebook", "claim", "verdict before", "verdict after", "measured before", "measured after"]]
    changed = table[table["verdict before"].str[:4] != table["verdict after"].str[:4]]
    print(f"# The claims before and after\n\nWritten by `scripts/claims_before_after.py --before {args.before}`: each claim's "
          f"verdict and measurement as committed at `{args.before}` beside those in `figures/` now. {len(changed)} of "
          f"{len(table)} rows changed verdict (or exist on one side only).\n\nThe runs that wrote them (`manifest.json`):\n\n"
          "| notebook | before | after |\n|---|---|---|\n" + "\n".join(made) + "\n\n" + markdown(table))
    return 0


if __name__ == "__main__":
    invoke(main)
