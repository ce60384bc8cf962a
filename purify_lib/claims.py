"""The claim checks that close each notebook: a paper's claim, whether it held on the numbers just computed,
what was measured, and, where it differs, a diagnosis measured for the purpose.

A diagnosis is declared with its claim (``Diagnosis``): the defense runs it makes and a function that turns
their results into one sentence.  ``Section.claim`` runs it only when the claim differs, and records its runs in
the notebook's needs record either way, so ``run_all.py --plan`` prices it before anything runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from .files import atomic_path
from .paths import build_dir


def verdict(row: dict) -> str:
    """PASS or DIFFERS, and "within noise" where the measurement sits inside the seed spread of its threshold."""
    return ("PASS" if row["passed"] else "DIFFERS") + (" (within noise)" if row.get("within_noise") else "")


@dataclass
class Diagnosis:
    """What to measure when a claim differs: ``runs``, each ``(victim, defense, params)``, go through
    ``Section.defend`` (cached); ``explain`` gets their results in order (and nothing when there are none) and
    returns the sentence."""

    explain: Callable[..., str]
    runs: list = field(default_factory=list)


class Claims:
    """A notebook's verdicts on its paper's claims, computed on the numbers it just produced."""

    def __init__(self, notebook: str, profile: str, record: dict | None = None):
        self.notebook, self.profile, self.record = notebook, profile, record or {}
        self.rows: list[dict] = []

    def check(self, claim: str, passed: bool, measured: str, within_noise: bool = False) -> bool:
        self.rows.append({"claim": claim, "passed": bool(passed), "measured": measured, "diagnosis": "", "within_noise": bool(within_noise)})
        return bool(passed)

    def diagnose(self, diagnosis: str) -> None:
        """Say why the last claim checked differs, from a measurement made for the purpose."""
        if not self.rows or self.rows[-1]["passed"]:
            raise ValueError("diagnose() explains the claim just checked, and only one that differs")
        self.rows[-1]["diagnosis"] = diagnosis

    def report(self) -> list[dict]:
        """Print each claim as PASS or DIFFERS with what was measured (and why, where diagnosed); save them for run_all."""
        for row in self.rows:
            print(f"{verdict(row):7}  {row['claim']}\n         measured: {row['measured']}")
            if row["diagnosis"]:
                print(f"         diagnosis: {row['diagnosis']}")
        passed = sum(row["passed"] for row in self.rows)
        print(f"\n{passed} of {len(self.rows)} claims reproduced under profile {self.profile!r}.")
        path = build_dir() / "claims" / f"{self.notebook}.{self.profile}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"notebook": self.notebook, "profile": self.profile, "claims": self.rows,
                                       "record": self.record}, indent=1, default=str))
        return self.rows
