"""Regenerate every figure and table: run each notebook in notebooks/ under one profile.

    python run_all.py                       # every notebook, cpu profile here (paper with a GPU)
    python run_all.py --profile smoke --only 01 03
    python run_all.py -p seed=1             # a parameter for every notebook (JSON values)

Each py:percent source is read with jupytext and executed by papermill into
``build/<profile>/<notebook>.ipynb``.  A notebook whose source, parameters and library code are
unchanged since its last successful run, and whose outputs are still on disk as written, is
skipped.  A notebook counts as done only when its stamp (``<notebook>.done.json``) is written,
after it finished; a failed or interrupted run leaves no stamp and reruns next time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
LIBRARY = ROOT / "purify_lib"


def notebook_names() -> list[str]:
    return sorted(path.stem for path in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def select(only: list[str] | None) -> list[str]:
    """Notebooks named (or prefixed, like ``01``) by ``only``; all of them when empty."""
    from purify_lib.errors import PurifyError

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
    from purify_lib.errors import PurifyError

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


def input_digest(name: str, parameters: dict) -> str:
    """What a notebook's outputs depend on: its source, its parameters and the library's code."""
    digest = hashlib.sha256((NOTEBOOKS / f"{name}.py").read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for path in sorted(LIBRARY.rglob("*.py")):
        digest.update(path.relative_to(LIBRARY).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def outputs_of(name: str, profile: str) -> dict[str, str]:
    """The files the manifest says ``name`` wrote under ``profile``, with their SHA-256."""
    from purify_lib.files import sha256_file
    from purify_lib.report import figures_dir

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


def execute(name: str, profile: str, parameters: dict, build: Path, force: bool = False) -> dict:
    """Run one notebook (unless up to date); return its status, time and claim verdicts.

    Importable and picklable, so a submitit job runs exactly this.
    """
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from purify_lib.files import atomic_path
    from purify_lib.report import build_dir

    all_parameters = {"profile": profile, **parameters}
    digest = input_digest(name, all_parameters)
    folder = build / profile
    stamp, output = folder / f"{name}.done.json", folder / f"{name}.ipynb"
    if not force and up_to_date(stamp, digest, name, profile):
        done = json.loads(stamp.read_text())
        return {"notebook": name, "status": "unchanged", "seconds": 0.0, "claims": done.get("claims", [])}
    stamp.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    claims_file = build_dir() / "claims" / f"{name}.{profile}.json"
    claims_file.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(jupytext.read(NOTEBOOKS / f"{name}.py"), str(output), parameters=all_parameters,
                                   cwd=str(NOTEBOOKS), progress_bar=False, kernel_name="python3")
    except PapermillExecutionError as error:
        return {"notebook": name, "status": "failed", "seconds": time.perf_counter() - started,
                "error": f"cell {error.cell_index} (execution count {error.exec_count}): {error.ename}: {error.evalue}", "output": str(output)}
    except Exception as error:  # a kernel that died, a notebook that could not be read: report, do not stop the others
        return {"notebook": name, "status": "failed", "seconds": time.perf_counter() - started,
                "error": f"{type(error).__name__}: {error}", "output": str(output)}
    seconds = time.perf_counter() - started
    claims = json.loads(claims_file.read_text())["claims"] if claims_file.exists() else []
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps({"inputs": digest, "parameters": all_parameters, "seconds": round(seconds, 1),
                                   "outputs": outputs_of(name, profile), "claims": claims}, indent=1))
    return {"notebook": name, "status": "ran", "seconds": seconds, "claims": claims}


def summary(results: list[dict], total: float) -> str:
    lines = ["", f"{'notebook':28} {'status':10} {'seconds':>8}  claims"]
    for r in results:
        passed = sum(c["passed"] for c in r.get("claims", []))
        claims = f"{passed}/{len(r['claims'])} PASS" if r.get("claims") else "-"
        lines.append(f"{r['notebook']:28} {r['status']:10} {r['seconds']:8.0f}  {claims}")
    lines.append(f"{'total':28} {'':10} {total:8.0f}")
    for r in results:
        for c in r.get("claims", []):
            lines.append(f"  {'PASS   ' if c['passed'] else 'DIFFERS'} {r['notebook']}: {c['claim']}  [{c['measured']}]")
        if r["status"] == "failed":
            lines.append(f"  FAILED  {r['notebook']}: {r['error']}  (partial output: {r['output']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    from purify_lib.profiles import PROFILES, default_profile_name, get_profile
    from purify_lib.report import build_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default: {default_profile_name()})")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks (name or number)")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE", help="a parameter for every notebook")
    parser.add_argument("--force", action="store_true", help="run even the notebooks whose inputs have not changed")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile).name
    names = select(args.only)
    parameters = parse_parameters(args.parameter)
    build = build_dir()

    results, started = [], time.perf_counter()
    for index, name in enumerate(names, 1):
        print(f"[{index}/{len(names)}] {name} (profile {profile}) ...", flush=True)
        result = execute(name, profile, parameters, build, args.force)
        results.append(result)
        claims = result.get("claims", [])
        verdict = f", {sum(c['passed'] for c in claims)}/{len(claims)} claims PASS" if claims else ""
        detail = f": {result['error']}" if result["status"] == "failed" else ""
        print(f"[{index}/{len(names)}] {name}: {result['status']} in {result['seconds']:.0f} s{verdict}{detail}", flush=True)
    print(summary(results, time.perf_counter() - started))
    failed = [r["notebook"] for r in results if r["status"] == "failed"]
    if failed:
        print(f"error: {len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from purify_lib.cli import run_cli

    run_cli(main)
