"""What a notebook needs around its science: profile, device, victims, defenses, outputs, claims.

A notebook starts with ``section = Section("01_fine_tuning", profile, device, seed, victim_seed)`` and
then asks ``section.victim(...)`` and ``section.defend(...)`` (both cached; ``sweep.sweep`` runs many),
saves with ``section.figure(...)`` / ``section.table(...)`` and ends with ``section.claim(...)`` for each
of its paper's claims and ``section.finish()``.  Every output carries the run record and is listed in
the folder's manifest.  Two seeds: ``seed`` is the defenses' (and any tuning run's), ``victim_seed`` the
victims' (their split, poisons and training), so re-running the defenses at other seeds reuses the victims.

Every victim and defense run a notebook asks for is noted with the seconds it took and whether
the cache had it; ``finish`` writes them to ``needs_<notebook>.json`` beside the figures, which is
what ``run_all.py --plan`` reads to say what a run would train and how long it would take.
"""
from __future__ import annotations

import json
import time

import pandas as pd

from . import plots
from .defend import code_digest, defend
from .files import atomic_path, locked
from .metrics import pick_device
from .profiles import get_profile
from .claims import Claims, Diagnosis, verdict
from .paths import figures_dir
from .provenance import run_record, victim_name
from .zoo import seeded_victim


class Section:
    def __init__(self, notebook: str, profile: str = "", device: str = "auto", seed: int = 0, victim_seed: int = 0, dataset: str = "",
                 **parameters):
        self.notebook = notebook
        # ``dataset``: another dataset than the profile's (CIFAR-10), and under paper BackdoorBench's recipe for it
        other_data = {"dataset": dataset} if dataset else {}
        parameters = {**other_data, **parameters}
        self.profile = get_profile(profile or None, **other_data)
        self.device = pick_device(device)
        self.seed, self.victim_seed = seed, victim_seed
        self.parameters = {"profile": self.profile.name, "device": device, "seed": seed, "victim_seed": victim_seed, **parameters}
        self.figures = figures_dir(self.profile.name)
        self.victims: dict = {}
        self.requested = {"device": device, "seed": seed, "victim_seed": victim_seed, **parameters}  # as the parameters cell (or papermill) gave them
        self.needs: list[dict] = []  # every victim and defense asked for, with its cost (see ``finish``)
        self.started = time.perf_counter()
        self.claims = Claims(notebook, self.profile.name)
        self.left_to_paper: dict = {}  # what this profile leaves out of the paper profile's defaults (``settings``)
        plots.style()
        print(f"{notebook}: profile {self.profile.name} ({self.profile.dataset}, width {self.profile.width}, {self.profile.train_size or 'all'} training images, "
              f"{self.profile.recipe.epochs} epochs), device {self.device}, outputs in {self.figures}")

    def victim(self, attack: str, rate: float, **attack_params):
        """The zoo's victim (trained once, then loaded), remembered for the run record; ``attack_params``
        on top of the profile's (NFT's trigger set, for instance)."""
        key = (attack, rate, *sorted(attack_params.items())) if attack_params else (attack, rate)
        if key not in self.victims:
            started = time.perf_counter()
            victim = self.victims[key] = seeded_victim(attack, rate, self.profile, self.victim_seed, attack_params=attack_params or None,
                                                       device=self.device, progress=False)
            # ``spec``: what ``seeded_victim`` needs to train it again, so a cluster run can train it before the notebooks
            spec = {"attack": attack, "rate": rate, "attack_params": attack_params, "victim_seed": self.victim_seed}
            self._note("victim", victim, started, victim.path.stem, victim.cache_hit, victim.record["train_seconds"], spec=spec)
        return self.victims[key]

    def imported_victim(self, path):
        """A BackdoorBench victim from its ``attack_result.pt`` (``interop.backdoorbench.import_victim``), under this
        run's profile's defense budgets; afterwards ``victim(attack, rate)`` with its name and rate gives it too."""
        from .interop.backdoorbench import import_victim

        started = time.perf_counter()
        victim = import_victim(path, self.profile, device=self.device)
        self.victims[(victim.attack.name, victim.poison_rate)] = victim
        self._note("victim", victim, started, victim.path.stem, True, 0.0, imported=str(path))
        return victim

    def defend(self, victim, name: str, **params):
        """``defend.defend`` with this run's profile and seed; results are cached beside the zoo."""
        params.setdefault("seed", self.seed)
        started = time.perf_counter()
        result = defend(victim, name, self.profile, **params)
        self._note("defense", victim, started, result.cache_entry, result.cache_hit, result.seconds, defense=name, params=params)
        return result

    def _note(self, kind: str, victim, started: float, entry: str, cached: bool, cost: float, **what) -> None:
        """``seconds``: this call's wall time (a load when ``cached``); ``cost``: what computing it took when it was made."""
        self.needs.append({"kind": kind, "victim": victim_name(victim), **what,
                           "entry": entry, "cached": cached, "seconds": round(time.perf_counter() - started, 1), "cost": round(cost, 1)})

    def claim(self, text: str, holds: bool, measured: str, *, diagnosis: Diagnosis | None = None, margins: dict | None = None,
              noise: dict | None = None) -> bool:
        """Check a paper's claim on the numbers just computed.  ``diagnosis`` runs only when the claim differs; its
        defense runs are noted either way (kind ``diagnosis``), so ``run_all.py --plan`` prices them.  ``margins``: per
        metric, how far the measurement sits on the passing side of the claim's threshold (negative: the failing
        side); with ``noise`` (``spread``: what the seed alone moves each metric) a verdict that a seed could flip
        says so: a pass with some margin inside its spread, or a failure with every failing margin inside it."""
        within = False
        if margins and noise:
            spread_of = {metric: margin for metric, margin in margins.items() if noise.get(metric)}  # a seed that moves nothing flips nothing
            within = bool(spread_of) and (not all(m > noise[k] for k, m in spread_of.items()) if holds else
                                          not any(m < -noise[k] for k, m in spread_of.items()))
        note = " (within noise: " + ", ".join(f"{k} {m:+.{3 if k == 'der' else 1}f} from the threshold against a seed spread of {noise[k]:.{3 if k == 'der' else 1}f}"
                                              for k, m in margins.items() if noise.get(k)) + ")" if within else ""
        passed = self.claims.check(text, holds, measured + note, within_noise=within)
        if diagnosis is not None:
            for victim, name, params in diagnosis.runs:
                self.needs.append({"kind": "diagnosis", "claim": text, "victim": victim_name(victim), "defense": name,
                                   "params": {"seed": self.seed, **params}, "ran": not passed})
            if not passed:
                explained = diagnosis.explain(*[self.defend(victim, name, **params) for victim, name, params in diagnosis.runs])
                if explained:  # nothing to measure (no victim it applies to) leaves the verdict undiagnosed
                    self.claims.diagnose(explained)
        return passed

    def spread(self, victim, name: str, seeds=None, **params) -> dict:
        """The standard deviation of ACC, ASR and DER after defense ``name`` (with ``params``) on ``victim`` over
        defense ``seeds`` (default: the profile's ``spread_seeds`` from this run's seed on): the noise a claim's
        margins are weighed against."""
        from .sweep import arm, sweep

        seeds = list(seeds) if seeds is not None else [self.seed + k for k in range(self.profile.spread_seeds)]
        row = sweep(self, [victim], [arm(name, **params)], baseline=False, seeds=seeds).iloc[0]
        return {m: float(row[f"{m} ±"]) if len(seeds) > 1 else 0.0 for m in ("acc", "asr", "der")}

    def settings(self, defaults: dict, **given) -> dict:
        """Each parameter as given, or, when left empty (``[]``, ``""``, ``0``, ``None``), this section's default for the profile."""
        chosen = {name: value if value not in (None, "", 0, [], ()) else defaults[self.profile.name][name] for name, value in given.items()}
        self.parameters.update(chosen)
        self.requested.update(given)
        self.left_to_paper = left_to_paper(defaults, self.profile.name, chosen)
        if self.left_to_paper:
            print(f"left to profile paper (its defaults that profile {self.profile.name} does not run): "
                  + "; ".join(f"{name}: {', '.join(map(str, values))}" for name, values in self.left_to_paper.items()))
        return chosen

    def record(self) -> dict:
        return run_record(self.notebook, self.profile, self.parameters, self.victims.values(), self.device)

    def figure(self, fig, name: str):
        paths = plots.save_figure(fig, name, self.figures, self.record())
        self._manifest(paths)
        return paths

    def table(self, frame, name: str, caption: str = ""):
        paths = plots.save_table(frame, name, self.figures, caption, self.record())
        self._manifest(paths)
        return paths

    def _manifest(self, paths) -> None:
        """Say which notebook, profile and commit made each file, in ``manifest.json`` beside them."""
        manifest = self.figures / "manifest.json"
        record = self.record()
        with locked(self.figures / ".manifest.lock"):
            entries = json.loads(manifest.read_text()) if manifest.exists() else {}
            for path in paths:
                entries[path.name] = {"notebook": self.notebook, "profile": self.profile.name, "commit": record["commit"]}
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n")

    def finish(self):
        """Print each claim's verdict and save them with the run record, and as ``claims_<notebook>`` beside the figures."""
        self.claims.record = self.record()
        rows = self.claims.report()
        verdicts = pd.DataFrame([{"verdict": verdict(row), "claim": row["claim"], "measured": row["measured"],
                                  "diagnosis": row["diagnosis"]} for row in rows])
        self.table(verdicts, f"claims_{self.notebook}", f"The paper's claims checked by {self.notebook} under profile {self.profile.name}.")
        self._write_needs()
        return rows

    def _defense_code(self) -> dict:
        """Each defense this run used, and the digest of its code (``defend.code_digest``)."""
        return {name: code_digest(name) for name in sorted({item["defense"] for item in self.needs if item["kind"] == "defense"})}

    def _write_needs(self) -> None:
        """``needs_<notebook>.json``: the victims and defense runs this run used, what each cost, and the
        defense-code digests their cache entries were made under (a different digest makes them misses)."""
        path = self.figures / f"needs_{self.notebook}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"notebook": self.notebook, "profile": self.profile.name, "requested": self.requested,
                                       "left_to_paper": self.left_to_paper,
                                       "defense_code": self._defense_code(), "seconds": round(time.perf_counter() - self.started, 1),
                                       "items": self.needs}, indent=1, default=str) + "\n")
        self._manifest([path])


def left_to_paper(defaults: dict, profile: str, chosen: dict) -> dict:
    """What the ``paper`` profile's defaults run and the ``chosen`` values (under ``profile``) do not: per
    parameter, the list items they lack, or the paper's value where a single value differs."""
    if profile == "paper" or "paper" not in defaults:
        return {}
    left = {}
    for name, here in chosen.items():
        paper = defaults["paper"][name]
        if isinstance(paper, (list, tuple)):
            missing = [item for item in paper if item not in list(here)]
            if missing:
                left[name] = missing
        elif paper != here:
            left[name] = [f"{paper} (here {here})"]
    return left
