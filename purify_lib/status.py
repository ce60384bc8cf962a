"""``STATUS.md`` beside a profile's figures: what reproduces, written by ``run_all.py`` after every run from
what the notebooks themselves recorded, so that no measured number has to be copied into prose by hand.

- the claims: each notebook's verdicts, what was measured and the diagnosis (``claims_<notebook>.csv``);
- the victims: each one a notebook used, from its zoo record (ACC, ASR, whether the backdoor was learned,
  training seconds, the machine that trained it);
- the cost: each notebook's last finished run (its needs record): wall seconds, victims and defense runs.
"""
from __future__ import annotations

import json
from pathlib import Path

from .files import atomic_path
from .paths import figures_dir
from .plots import markdown


def _claims(notebook: str, profile: str) -> list[dict]:
    """The notebook's last verdicts, as ``Section.finish`` wrote them beside its figures (``claims_<notebook>.csv``)."""
    import pandas as pd

    try:
        rows = pd.read_csv(figures_dir(profile) / f"claims_{notebook}.csv").fillna("").to_dict("records")
    except (OSError, pd.errors.EmptyDataError):
        return []
    return [{**row, "passed": str(row["verdict"]).startswith("PASS")} for row in rows]


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def status(notebooks: list[str], profile: str, zoo: Path) -> str:
    """The Markdown of ``STATUS.md`` for ``notebooks`` under ``profile``, against the zoo at ``zoo``."""
    import pandas as pd

    from .provenance import git_commit, machine

    facts = machine()
    lines = [f"# What reproduces under profile `{profile}`", "",
             f"Written by `purify_lib.status` (which `run_all.py` calls after every run) at commit `{git_commit()}` on {facts['cpu']} ({facts['threads']} threads) from the "
             "notebooks' own records: do not edit by hand. Each claim's full text and diagnosis are also in "
             "`claims_<notebook>.md` beside this file.", ""]
    summary, claims, victims, left, used = [], [], {}, [], set()
    for name in notebooks:
        rows = _claims(name, profile)
        needs = _json(figures_dir(profile) / f"needs_{name}.json") or {"items": [], "seconds": None}
        items = [i for i in needs["items"] if i["kind"] != "diagnosis"]
        summary.append({"notebook": name, "claims PASS": f"{sum(r['passed'] for r in rows)}/{len(rows)}" if rows else "not run",
                        "minutes": round(needs["seconds"] / 60, 1) if needs.get("seconds") else None,
                        "victims": len({i["entry"] for i in items if i["kind"] == "victim"}),
                        "defense runs": len({i["entry"] for i in items if i["kind"] == "defense"}),
                        "computed here": sum(not i["cached"] for i in items)})
        left += [{"notebook": name, "parameter": parameter, "run by paper only": ", ".join(map(str, values))}
                 for parameter, values in (needs.get("left_to_paper") or {}).items()]
        used |= {i["defense"] for i in items if i["kind"] == "defense"}
        claims += [{"notebook": name, "verdict": r["verdict"], "claim": r["claim"], "measured": r["measured"], "diagnosis": r["diagnosis"]} for r in rows]
        for item in (i for i in items if i["kind"] == "victim"):
            record = _json(zoo / f"{item['entry']}.json")
            if record is None and item["entry"] not in victims:  # listed, not dropped: the zoo that trained it is elsewhere
                victims[item["entry"]] = {"victim": item["victim"], "learned": "its zoo record is not in this zoo", "entry": item["entry"]}
            elif record and item["entry"] not in victims:
                m = record["metrics"]
                victims[item["entry"]] = {"victim": item["victim"], "ACC": m["acc"], "ASR": m["asr"], "learned": "yes" if record["backdoored"] else "no",
                                          "train minutes": round(record["train_seconds"] / 60, 1), "trained on": record["versions"].get("gpu") or record["versions"]["cpu"],
                                          "threads": record["versions"]["threads"], "entry": item["entry"]}
    lines += ["## Notebooks", "", markdown(pd.DataFrame(summary)), "## Claims", "", markdown(pd.DataFrame(claims, columns=["notebook", "verdict", "claim", "measured", "diagnosis"])),
              "## Victims", "", markdown(pd.DataFrame(list(victims.values()), columns=["victim", "ACC", "ASR", "learned", "train minutes", "trained on", "threads", "entry"]))]
    if profile != "paper":
        from .defenses import DEFENSES

        cut = [{"defense": d, "settings": ", ".join(f"{k}={v}" for k, v in DEFENSES[d].budget(profile).items()), "why": DEFENSES[d].budgets[profile][1]}
               for d in sorted(used) if d in DEFENSES and DEFENSES[d].budget(profile)]
        lines += ["## Left to profile `paper`", "", f"What the `paper` profile's defaults run and `{profile}`'s do not, as each notebook's "
                  "last run recorded it (each executed notebook prints the same after its parameters):", "",
                  markdown(pd.DataFrame(left, columns=["notebook", "parameter", "run by paper only"])),
                  f"Defense budgets `{profile}` cuts (`paper` runs each paper's own):", "",
                  markdown(pd.DataFrame(cut, columns=["defense", "settings", "why"]))]
    return "\n".join(lines)


def write_status(notebooks: list[str], profile: str) -> Path:
    """Write ``STATUS.md`` beside ``profile``'s figures; returns its path."""
    from .zoo import zoo_dir

    path = figures_dir(profile) / "STATUS.md"
    with atomic_path(path) as tmp:
        tmp.write_text(status(notebooks, profile, zoo_dir()))
    return path
