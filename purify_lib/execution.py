"""Executing notebooks: one function a local loop, a submitit job or a test can all call.

``execute`` runs one notebook (a py:percent source read with jupytext, executed by papermill)
unless it is up to date, and returns its status, time and claim verdicts.  A notebook is done
only once its stamp (``<build>/<profile>/<label>.done.json``) exists; the stamp is written after
the run finished and names the inputs it ran on and the SHA-256 of every output it wrote, so a
failed, killed or half-written run is never taken for a finished one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from .paths import BUILD_ENV, PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"
LIBRARY = PROJECT_ROOT / "purify_lib"


def notebook_names() -> list[str]:
    return sorted(path.stem for path in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def select(only: list[str] | None) -> list[str]:
    """Notebooks named (or prefixed, like ``01``) by ``only``; all of them when empty."""
    from .errors import PurifyError

    names = notebook_names()
    if not only:
        return names
    chosen = []
    for wanted in only:
        matches = [name for name in names if name == wanted or name.startswith(wanted + "_") or name.split("_")[0] == wanted]
        if not matches:
            raise PurifyError(f"unknown notebook {wanted!r}; allowed: {', '.join(names)} (or their number, e.g. 01)")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def parse_parameters(pairs: list[str]) -> dict:
    """``name=value`` pairs; values are JSON (``seed=1``, ``victims=["badnets:0.1"]``), else plain strings."""
    from .errors import PurifyError

    parameters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise PurifyError(f"parameter {pair!r} is not name=value")
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
    return parameters


def read_parameters_file(path: str) -> dict:
    """A YAML or JSON file of parameters (papermill's ``-f``): a top-level ``name: value`` goes to every notebook
    that declares ``name``, as ``-p`` does; a top-level key that is a notebook's name holds that notebook's own
    pairs, which win over the shared ones.  Checked later by ``check_parameters``, exactly as ``-p`` values are."""
    import yaml

    from .errors import PurifyError

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise PurifyError(f"parameters file {path!r} cannot be read ({error.strerror or error})") from None
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else f" at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
        raise PurifyError(f"parameters file {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}{line}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise PurifyError(f"parameters file {path!r} holds a {type(values).__name__}; expected a mapping of name: value "
                          "(or of notebook: {name: value})")
    notebooks = notebook_names()
    for key, value in values.items():
        if key in notebooks and not isinstance(value, dict):
            raise PurifyError(f"parameters file {path!r}: {key} must hold a mapping of its parameters, not {json.dumps(value)}")
        if key == "profile" or (key in notebooks and "profile" in value):
            raise PurifyError(f"parameters file {path!r} sets profile; choose the profile with --profile")
    return values


def for_notebook(name: str, parameters: dict) -> dict:
    """The parameters ``name`` gets: the shared ones (any key that is not a notebook's name), then its own section."""
    notebooks = notebook_names()
    return {**{k: v for k, v in parameters.items() if k not in notebooks}, **parameters.get(name, {})}


def merge_parameters(from_file: dict, given: dict) -> dict:
    """A parameters file's values with ``-p``'s ``given`` on top: a given name wins over the file's shared value
    and over every notebook section's."""
    notebooks = notebook_names()
    return {**{key: {k: v for k, v in value.items() if k not in given} if key in notebooks else value
               for key, value in from_file.items()}, **given}


def profile_defaults(name: str, profile: str) -> dict:
    """What ``name``'s parameters resolve to under ``profile`` when left empty: its ``DEFAULTS[profile]``, read from
    the source by running only that cell's imports, its plain assignments before ``DEFAULTS`` and ``DEFAULTS``
    itself (no victim, no defense, no Section)."""
    import ast

    import jupytext

    for cell in jupytext.read(NOTEBOOKS / f"{name}.py").cells:
        tree = ast.parse(cell.source) if cell.cell_type == "code" else None
        names = [t.id for node in (tree.body if tree else []) if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]
        if "DEFAULTS" not in names:
            continue
        keep = []
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)):
                keep.append(node)
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DEFAULTS" for t in node.targets):
                break
        namespace: dict = {}
        exec(compile(ast.Module(body=keep, type_ignores=[]), f"{name}.py", "exec"), namespace)
        return dict(namespace["DEFAULTS"][profile])
    return {}


def parameters_file_text(names: list[str], profile: str) -> str:
    """``--print-parameters``: each notebook's defaults under ``profile``, as a file ``run_all.py -f`` reads."""
    import yaml

    shared = {k: v for k, v in notebook_parameters(names[0]).items() if k in ("device", "seed", "victim_seed")} if names else {}
    sections = {name: profile_defaults(name, profile) for name in names}
    return (f"# The notebooks' defaults under profile {profile}: edit, then `python run_all.py --profile {profile} -f THIS_FILE`.\n"
            "# Top-level names go to every notebook that has them; a notebook's section holds its own.\n"
            + yaml.safe_dump({**shared, **sections}, sort_keys=False, default_flow_style=None, width=120))


def notebook_parameters(name: str) -> dict:
    """The names and default values of a notebook's ``parameters`` cell (read from its source, nothing run)."""
    import ast

    import jupytext

    for cell in jupytext.read(NOTEBOOKS / f"{name}.py").cells:
        if "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)}
    return {}


def _kind(value) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a JSON list"}.get(type(value), type(value).__name__)


def check_parameters(names: list[str], points: list[dict]) -> None:
    """Each parameter of each of ``points`` (one dict per run) must be in the parameters cell of at
    least one of the notebooks ``names``, with a value of the kind its default has there; else one
    line naming the parameter, the value and what is expected.  A key that is a notebook's name (a
    parameters file's section) holds that notebook's own parameters, checked against it alone."""
    notebooks = notebook_names()
    declared = {name: notebook_parameters(name) for name in names}
    for point in points:
        _check(declared, {k: v for k, v in point.items() if k not in notebooks})
        for section in (k for k in point if k in notebooks):
            _check({section: declared.get(section) or notebook_parameters(section)}, point[section])


def _check(declared: dict, values: dict) -> None:
    from .errors import PurifyError

    for key, value in values.items():
        owners = {name: cell[key] for name, cell in declared.items() if key in cell}
        if not owners:
            allowed = sorted({k for cell in declared.values() for k in cell})
            raise PurifyError(f"unknown notebook parameter {key!r} (given {key}={json.dumps(value)}); "
                              f"the parameters of {', '.join(declared)} are: {', '.join(allowed)}")
        for name, default in owners.items():
            fits = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
            fits = fits or (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool))
            if not fits:
                raise PurifyError(f"parameter {key}={json.dumps(value)} is {_kind(value)}; {name} expects {_kind(default)} "
                                  f"(its default is {key} = {default!r})")
        if key in VALUE_CHECKS:
            VALUE_CHECKS[key](value)


def _check_dataset(value: str) -> None:
    from .datasets import get_spec

    if value:
        get_spec(value)


def _check_imported(paths: list) -> None:
    from pathlib import Path

    from .errors import PurifyError

    for path in paths:
        if not Path(str(path)).expanduser().is_file():
            raise PurifyError(f"imported={json.dumps(paths)}: {path!r} is no file; expected BackdoorBench attack_result.pt paths")


# Values a parameter's kind does not settle, checked before anything runs (names, paths)
VALUE_CHECKS = {"dataset": _check_dataset, "imported": _check_imported}


def expand_grid(pairs: list[str]) -> list[dict]:
    """``["seed=[0,1]", "per_group=[50,100]"]`` -> the 4 points of their product (``[{}]`` without a grid)."""
    from itertools import product

    from .errors import PurifyError

    axes = parse_parameters(pairs)
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise PurifyError(f"grid axis {name}={values!r} must be a non-empty JSON list, e.g. {name}=[0,1]")
    return [dict(zip(axes, combo)) for combo in product(*axes.values())] if axes else [{}]


def point_label(name: str, parameters: dict) -> str:
    """``name`` for a plain run; ``name@<hash of the parameters>`` for a point of a parameter grid."""
    return f"{name}@{hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:8]}" if parameters else name


def input_digest(name: str, parameters: dict) -> str:
    """What a notebook's outputs depend on: its source, its parameters and the library's code."""
    digest = hashlib.sha256((NOTEBOOKS / f"{name}.py").read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for path in sorted(LIBRARY.rglob("*.py")):
        digest.update(path.relative_to(LIBRARY).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def outputs_of(name: str, profile: str) -> dict[str, str]:
    """The files the manifest says ``name`` wrote under ``profile``, with their SHA-256."""
    from .files import sha256_file
    from .paths import figures_dir

    folder = figures_dir(profile)
    manifest = folder / "manifest.json"
    entries = json.loads(manifest.read_text()) if manifest.exists() else {}
    return {file: sha256_file(folder / file) for file, entry in entries.items()
            if entry["notebook"] == name and entry["profile"] == profile and (folder / file).exists()}


def up_to_date(stamp: Path, digest: str, name: str, profile: str) -> bool:
    if not stamp.exists():
        return False
    try:
        done = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    return done.get("inputs") == digest and bool(done.get("outputs")) and outputs_of(name, profile) == done["outputs"]


@contextlib.contextmanager
def _build_for(point_build: Path | None):
    """Send a grid point's figures, claims and notebook to its own build folder (the kernel inherits it)."""
    if point_build is None:
        yield
        return
    saved = os.environ.get(BUILD_ENV)
    os.environ[BUILD_ENV] = str(point_build)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(BUILD_ENV, None)
        else:
            os.environ[BUILD_ENV] = saved


def execute(name: str, profile: str, parameters: dict | None = None, point: dict | None = None, force: bool = False,
            check_only: bool = False) -> dict:
    """Run one notebook under ``profile`` (unless up to date); return its status, time and claim verdicts.

    ``parameters`` go to papermill; ``point`` (a grid point's parameters) too, and its outputs go
    to ``<build>/grid/<name>@<hash>/`` so that points never overwrite each other.  With
    ``check_only`` nothing runs: the status is ``unchanged`` or ``pending``.  A plain
    module-level function, so a submitit job runs exactly this.
    """
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .files import atomic_path
    from .paths import build_dir

    point = point or {}
    label = point_label(name, point)
    all_parameters = {"profile": profile, **for_notebook(name, parameters or {}), **point}
    with _build_for(build_dir_for(point, label)):
        build = build_dir()
        digest = input_digest(name, all_parameters)
        folder = build / profile
        stamp, output = folder / f"{name}.done.json", folder / f"{name}.ipynb"
        result = {"notebook": label, "parameters": all_parameters, "build": str(build)}
        if not force and up_to_date(stamp, digest, name, profile):
            return {**result, "status": "unchanged", "seconds": 0.0, "claims": json.loads(stamp.read_text()).get("claims", [])}
        if check_only:
            return {**result, "status": "pending", "seconds": 0.0, "claims": []}
        stamp.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        claims_file = build / "claims" / f"{name}.{profile}.json"
        claims_file.unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            papermill.execute_notebook(jupytext.read(NOTEBOOKS / f"{name}.py"), str(output), parameters=all_parameters,
                                       cwd=str(NOTEBOOKS), progress_bar=False, kernel_name="python3")
        except PapermillExecutionError as error:
            return {**result, "status": "failed", "seconds": time.perf_counter() - started, "output": str(output),
                    "error": f"cell {error.cell_index} (execution count {error.exec_count}): {error.ename}: {error.evalue}"}
        except Exception as error:  # a dead kernel, an unreadable notebook: report it, do not stop the others
            return {**result, "status": "failed", "seconds": time.perf_counter() - started, "output": str(output),
                    "error": f"{type(error).__name__}: {error}"}
        seconds = time.perf_counter() - started
        claims = json.loads(claims_file.read_text())["claims"] if claims_file.exists() else []
        record = needs_record(name, profile)
        result["breakdown"], result["computed"] = breakdown(record, seconds), computed(record)
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps({"inputs": digest, "parameters": all_parameters, "seconds": round(seconds, 1),
                                       "outputs": outputs_of(name, profile), "claims": claims}, indent=1))
        return {**result, "status": "ran", "seconds": seconds, "claims": claims}


def needs_record(name: str, profile: str) -> dict | None:
    """What ``name``'s last finished run under ``profile`` asked of the zoo (``Section.finish`` writes it beside the figures)."""
    from .paths import figures_dir

    path = figures_dir(profile) / f"needs_{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


BREAKDOWN = ("victims", "defenses", "loads", "other")  # the parts ``breakdown`` splits a run's wall time into


def breakdown(record: dict | None, seconds: float) -> dict:
    """A run's wall time split into training victims, running defenses, loading cached ones, and the rest."""
    items = [i for i in record["items"] if i["kind"] != "diagnosis"] if record else []  # planned diagnoses took no time
    spent = {part: sum(i["seconds"] for i in items if test(i)) for part, test in (
        ("victims", lambda i: i["kind"] == "victim" and not i["cached"]),
        ("defenses", lambda i: i["kind"] == "defense" and not i["cached"]),
        ("loads", lambda i: i["cached"]))}
    return {**spent, "other": max(seconds - sum(spent.values()), 0.0)}


# Budget parameters a defense's cost grows with, in proportion.
BUDGET_PARAMETERS = ("epochs", "steps", "reverse_epochs", "rounds", "clip_epochs", "unlearn_epochs", "recover_epochs", "teacher_epochs")


def diagnosis_cost(item: dict, items: list[dict], defended: Path) -> float | None:
    """Seconds a diagnosis run would take: the cost recorded for the same defense (on the same victim where one
    ran), scaled by the ratio of the budget parameters the diagnosis changes to what that run used (its cache
    record's settings); ``None`` when no run of the defense is recorded to price it from."""
    runs = [i for i in items if i["kind"] == "defense" and i["defense"] == item["defense"]]
    runs.sort(key=lambda i: i["victim"] != item["victim"])  # the same victim first
    for reference in runs:
        try:
            used = json.loads((defended / f"{reference['entry']}.json").read_text())["params"]
        except (OSError, KeyError, json.JSONDecodeError):
            used = reference["params"]
        ratio = 1.0
        for name in BUDGET_PARAMETERS:
            if name in item["params"] and used.get(name):
                ratio *= item["params"][name] / used[name]
        return reference["cost"] * ratio
    return None


def computed(record: dict | None) -> dict:
    """How many victims a run trained and defense runs it computed (the ones the cache lacked)."""
    items = [i for i in record["items"] if i["kind"] != "diagnosis" and not i["cached"]] if record else []
    return {"victims": sum(i["kind"] == "victim" for i in items), "defense runs": sum(i["kind"] == "defense" for i in items)}


def _item_label(item: dict) -> str:
    if item["kind"] == "victim":
        return f"victim  {item['victim']}"
    params = ", ".join(f"{k}={v}" for k, v in item["params"].items() if k != "seed")
    return f"defense {item['defense']} on {item['victim']}" + (f" ({params})" if params else "")


def plan(tasks: list[tuple[str, dict]], profile: str, parameters: dict, force: bool = False) -> str:
    """What running ``tasks`` would do, without training anything: per notebook, the victims and defense
    runs its last finished run used (its needs record), which the zoo holds now, and the minutes left,
    estimated from the seconds each item took when it was computed."""
    return "\n".join(_plan(tasks, profile, parameters, force)[0])


def plan_minutes(tasks: list[tuple[str, dict]], profile: str, parameters: dict, force: bool = False, zoo: Path | None = None) -> dict:
    """The plan's minutes left per notebook label (0 when up to date, ``None`` when it has no needs record yet).
    ``zoo``: the zoo to price against instead of this one (an empty folder prices a cold run)."""
    return _plan(tasks, profile, parameters, force, zoo)[1]


def _plan(tasks, profile, parameters, force, zoo=None):
    from .defend import code_digest
    from .zoo import zoo_dir

    zoo = zoo or zoo_dir()
    counted: set[str] = set()  # an entry the plan already has a notebook compute before this one
    total = {"victims": 0.0, "defenses": 0.0, "own": 0.0}
    diagnoses_total = 0.0  # the diagnoses that run only where their claims differ
    unknown = []  # notebooks to run with no record of their needs
    minutes: dict = {}  # label -> minutes left (None: unknown)
    lines = [f"plan under profile {profile}: each notebook's needs as its last finished run recorded them "
             f"(needs_<notebook>.json beside its figures), against what the zoo ({zoo}) holds now"]
    for name, point in tasks:
        label = point_label(name, point)
        status = execute(name, profile, parameters, point, force=force, check_only=True)["status"]
        with _build_for(build_dir_for(point, label)):
            record = needs_record(name, profile)
        if status == "unchanged":
            lines.append(f"{label}: up to date, nothing to run")
            minutes[label] = 0.0
            continue
        if record is None:
            unknown.append(label)
            minutes[label] = None
            lines.append(f"{label}: to run; no record of its needs yet (it has not finished under profile {profile} here), "
                         "so its victims, defense runs and minutes are unknown")
            continue
        requested = {**notebook_parameters(name), **for_notebook(name, parameters), **point}
        differ = sorted(k for k, v in record["requested"].items() if k in requested and requested[k] != v)
        # A record from before per-defense digests holds one string: every defense in it counts as changed.
        recorded = record["defense_code"] if isinstance(record["defense_code"], dict) else {}
        changed = sorted({i["defense"] for i in record["items"] if i["kind"] == "defense" and recorded.get(i["defense"]) != code_digest(i["defense"])})
        planned = [i for i in record["items"] if i["kind"] == "diagnosis" and not i["ran"]]  # the ones that ran are among the defense items
        lines.append(f"{label}: to run" + (f"; recorded with other values of {', '.join(differ)}, so what it needs may differ" if differ else "")
                     + (f"; the code of {', '.join(changed)} changed since, so their runs are redone" if changed else ""))
        own = max(record["seconds"] - sum(item.get("seconds", 0.0) for item in record["items"]), 0.0)
        left = {"victims": 0.0, "defenses": 0.0, "own": own}
        counts = {"victim": [0, 0], "defense": [0, 0]}
        for item in (i for i in record["items"] if i["kind"] != "diagnosis"):
            folder = zoo if item["kind"] == "victim" else zoo / "defended"
            cached = bool(item["entry"]) and (folder / f"{item['entry']}.json").exists() and not (item["kind"] == "defense" and item["defense"] in changed)
            cost = item["cost"] if item["cached"] else item["seconds"]  # a run that computed it timed all of it
            counts[item["kind"]][0] += 1
            if cached or (item["entry"] and item["entry"] in counted):
                counts[item["kind"]][1] += 1
                state = "cached" if cached else "computed by an earlier notebook of this plan"
            else:
                counted.add(item["entry"])  # "" (a run with the cache off) is never taken for computed
                left["victims" if item["kind"] == "victim" else "defenses"] += cost
                state = f"{'to train' if item['kind'] == 'victim' else 'to run'}, about {cost / 60:.1f} min"
            lines.append(f"  {_item_label(item):58} {state}")
        lines.append(f"  victims: {counts['victim'][0]} ({counts['victim'][1]} cached or computed earlier in this plan); "
                     f"defense runs: {counts['defense'][0]} ({counts['defense'][1]} cached or computed earlier): about {sum(left.values()) / 60:.1f} min left ({left['victims'] / 60:.1f} training "
                     f"victims, {left['defenses'] / 60:.1f} running defenses, {own / 60:.1f} the notebook's own work)")
        total = {part: total[part] + left[part] for part in total}
        minutes[label] = sum(left.values()) / 60
        for item in planned:
            cost = diagnosis_cost(item, record["items"], zoo / "defended")
            diagnoses_total += cost or 0.0
            lines.append(f"  diagnosis {_item_label(item):48} runs if its claim differs: "
                         + (f"about {cost / 60:.1f} min" if cost is not None else "no run of this defense recorded to price it from"))
    lines.append(f"total: about {sum(total.values()) / 60:.1f} min left ({total['victims'] / 60:.1f} training victims, "
                 f"{total['defenses'] / 60:.1f} running defenses, {total['own'] / 60:.1f} the notebooks' own work), "
                 "from the times recorded on the machine that made each record"
                 + (f"; plus up to {diagnoses_total / 60:.1f} min of diagnoses, run only where their claims differ" if diagnoses_total else "")
                 + (f"; plus the unknown needs of {', '.join(unknown)}" if unknown else ""))
    return lines, minutes


def victims_to_train(tasks: list[tuple[str, dict]], profile: str) -> list[dict]:
    """The victims ``tasks`` need (as their needs records list them) that the zoo lacks, each once: what a
    cluster run trains first, as a job array of its own, so notebook jobs do not wait on one victim's lock
    with their GPUs idle.  Needs recorded before victims carried their ``spec`` are left to the notebooks."""
    from .zoo import zoo_dir

    zoo, chosen = zoo_dir(), {}
    for name, point in tasks:
        with _build_for(build_dir_for(point, point_label(name, point))):
            record = needs_record(name, profile)
        for item in record["items"] if record else []:
            if item["kind"] == "victim" and "spec" in item and not (zoo / f"{item['entry']}.json").exists():
                chosen.setdefault(item["entry"], {**item["spec"], "entry": item["entry"], "victim": item["victim"]})
    return list(chosen.values())


def train_victim(profile: str, spec: dict) -> dict:
    """Train (or load) the victim ``spec`` names under ``profile``: a module-level function a submitit job runs."""
    from .zoo import seeded_victim

    started = time.perf_counter()
    try:
        victim = seeded_victim(spec["attack"], spec["rate"], profile, spec["victim_seed"], attack_params=spec["attack_params"] or None,
                               progress=False)
    except Exception as error:  # reported beside the others; the notebook that needs it trains it itself
        return {"victim": spec["victim"], "status": "failed", "seconds": time.perf_counter() - started, "error": f"{type(error).__name__}: {error}"}
    return {"victim": spec["victim"], "status": "loaded" if victim.cache_hit else "trained", "seconds": time.perf_counter() - started,
            "entry": victim.path.stem}


def build_dir_for(point: dict, label: str) -> Path | None:
    """The build folder a grid point's outputs go to (None for a plain run: the usual one)."""
    from .paths import build_dir

    return build_dir() / "grid" / label if point else None
