"""Regenerate every figure and table: run each notebook in notebooks/ under one profile.

    python run_all.py                                   # every notebook; cpu profile here, paper with a GPU
    python run_all.py --profile smoke --only 01 03      # a subset, by number or name
    python run_all.py -p seed=1                         # a parameter for every notebook (JSON values)
    python run_all.py --print-parameters > params.yaml  # the notebooks' defaults under the profile, as a file to edit
    python run_all.py -f params.yaml                    # parameters from a YAML or JSON file (checked as -p values are)
    python run_all.py --plan                            # what a run would train and run, and the minutes left; runs nothing
    python run_all.py --executor slurm --gpus 1 --partition gpu --grid seed=[0,1,2]   # a job array on Slurm

Each py:percent source is read with jupytext and executed by papermill into
``build/<profile>/<notebook>.ipynb`` (``$PURIFY_BUILD`` moves ``build/``).  A notebook whose
source, parameters and library code are unchanged since its last successful run, and whose
outputs are still as it wrote them, is skipped; a failed or killed run leaves no completion
stamp and runs again next time.  ``--executor local`` or ``slurm`` submits one submitit job
per notebook and grid point instead; only the ones not yet done are submitted.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing

from purify_lib import execution  # noqa: E402
from purify_lib.cli import invoke  # noqa: E402
from purify_lib.errors import PurifyError  # noqa: E402

EXECUTORS = ("inline", "local", "slurm")
PARTS = execution.BREAKDOWN


def summary(results: list[dict], total: float) -> str:
    """Each notebook's status, wall seconds and claim verdicts; the seconds split into training victims,
    running defenses, loading cached ones and everything else (the notebook's own work, kernel start)."""
    lines = ["", f"{'notebook':32} {'status':10} {'seconds':>8} {'victims':>8} {'defenses':>8} {'loads':>8} {'other':>8}  claims"]
    sums = dict.fromkeys(PARTS, 0.0)
    for r in results:
        passed = sum(c["passed"] for c in r.get("claims", []))
        claims = f"{passed}/{len(r['claims'])} PASS" if r.get("claims") else "-"
        parts = r.get("breakdown") or dict.fromkeys(PARTS, 0.0)
        sums = {part: sums[part] + parts[part] for part in PARTS}
        lines.append(f"{r['notebook']:32} {r['status']:10} {r['seconds']:8.0f} " + " ".join(f"{parts[p]:8.0f}" for p in PARTS) + f"  {claims}")
    lines.append(f"{'total (wall)':32} {'':10} {total:8.0f} " + " ".join(f"{sums[p]:8.0f}" for p in PARTS))
    for r in results:
        for c in r.get("claims", []):
            lines.append(f"  {'PASS   ' if c['passed'] else 'DIFFERS'} {r['notebook']}: {c['claim']}  [{c['measured']}]")
            if c.get("diagnosis"):
                lines.append(f"          why: {c['diagnosis']}")
        if r["status"] == "failed":
            lines.append(f"  FAILED  {r['notebook']}: {r['error']}  (partial output: {r.get('output')})")
    return "\n".join(lines)


def progress(index: int, count: int, result: dict) -> None:
    claims = result.get("claims", [])
    verdict = f", {sum(c['passed'] for c in claims)}/{len(claims)} claims PASS" if claims else ""
    detail = f": {result['error']}" if result["status"] == "failed" else ""
    print(f"[{index}/{count}] {result['notebook']}: {result['status']} in {result['seconds']:.0f} s{verdict}{detail}", flush=True)


def run_inline(tasks, profile, parameters, force, estimate: dict) -> list[dict]:
    results, started = [], time.perf_counter()
    for index, (name, point) in enumerate(tasks, 1):
        print(f"[{index}/{len(tasks)}] {execution.point_label(name, point)} (profile {profile}) ...", flush=True)
        results.append(execution.execute(name, profile, parameters, point, force))
        progress(index, len(tasks), results[-1])
        rest = [estimate.get(execution.point_label(n, p)) for n, p in tasks[index:]]
        if rest:
            known = sum(m for m in rest if m is not None)
            print(f"      {(time.perf_counter() - started) / 60:.1f} min so far; about {known:.1f} min left by the plan"
                  + (f", plus {sum(m is None for m in rest)} notebook(s) it cannot price yet" if None in rest else ""), flush=True)
    return results


def show_plan(estimate: dict) -> None:
    """The plan's minutes per notebook, before the first one runs."""
    known = sum(m for m in estimate.values() if m is not None)
    parts = ", ".join(f"{label} {'?' if m is None else f'{m:.1f}'}" for label, m in estimate.items())
    print(f"plan, in minutes: {parts}; about {known:.1f} in all"
          + (" (? = no record of its needs yet: its first run sets one)" if None in estimate.values() else "") + "; `--plan` lists each item", flush=True)


def zoo_is_empty() -> bool:
    """Whether the zoo holds no victim and the defense cache no result: a cold run."""
    from purify_lib.zoo import zoo_dir

    zoo = zoo_dir()
    return not any(zoo.glob("*.json")) and not any((zoo / "defended").glob("*.json"))


def write_run_summary(results: list[dict], profile: str, wall: float, cold: bool, estimate: dict, tasks: list, parameters: dict):
    """``run_summary.json`` beside the profile's figures: what this run was, where, what it cost and computed, and what
    ``--plan`` now prices a cold run of the same notebooks at, from the needs records this run wrote (``plan_if_cold``:
    the same figure ``PURIFY_ZOO=<an empty folder> run_all.py --plan --force`` prints)."""
    import tempfile

    from purify_lib.files import atomic_path
    from purify_lib.paths import figures_dir
    from purify_lib.provenance import git_commit, machine

    computed = {part: sum(r.get("computed", {}).get(part, 0) for r in results) for part in ("victims", "defense runs")}
    with tempfile.TemporaryDirectory() as empty:
        priced = execution.plan_minutes(tasks, profile, parameters, force=True, zoo=Path(empty))
    known = [m for m in priced.values() if m is not None]
    facts = machine()
    summary = {"commit": git_commit(), "profile": profile, "machine": {k: facts.get(k) for k in ("cpu", "threads", "gpu", "platform")},
               "wall_seconds": round(wall, 1), "cold": cold,
               "breakdown": {part: round(sum((r.get("breakdown") or {}).get(part, 0.0) for r in results), 1) for part in PARTS},
               "computed": computed, "failed": [r["notebook"] for r in results if r["status"] == "failed"],
               "planned_minutes": {k: None if v is None else round(v, 1) for k, v in estimate.items()},
               "plan_if_cold": {"minutes": round(sum(known), 1), "vs_wall": round(sum(known) * 60 / wall, 3) if wall else None,
                                "unpriced": [k for k, v in priced.items() if v is None]},
               "notebooks": [{"notebook": r["notebook"], "status": r["status"], "seconds": round(r["seconds"], 1),
                              "breakdown": {k: round(v, 1) for k, v in (r.get("breakdown") or {}).items()}} for r in results]}
    path = figures_dir(profile) / "run_summary.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return path


def run_submitit(tasks, profile, parameters, force, args) -> list[dict]:
    """One submitit job per (notebook, grid point) not yet done, as one job array; wait for all.  The victims
    those notebooks' needs records list and the zoo lacks are trained first, as a job array of their own."""
    import submitit

    from purify_lib.paths import build_dir

    results, pending = [], []
    for name, point in tasks:
        status = None if force else execution.execute(name, profile, parameters, point, check_only=True)
        if status is None or status["status"] == "pending":
            pending.append((name, point))
        else:
            results.append(status)
            progress(len(results), len(tasks), status)
    if not pending:
        return results
    logs = build_dir() / "submitit" / profile
    executor = submitit.AutoExecutor(folder=logs / "%j", cluster=args.executor)
    executor.update_parameters(name=f"purify-{profile}", timeout_min=args.time, cpus_per_task=args.cpus, gpus_per_node=args.gpus,
                               mem_gb=args.mem, slurm_partition=args.partition, slurm_array_parallelism=args.parallel)
    victims = execution.victims_to_train(pending, profile)
    if victims:
        # victims first, as an array of their own: six notebook jobs needing one victim would otherwise wait
        # on its lock, holding six GPUs idle
        jobs = submit(executor, args, execution.train_victim, [(profile, spec) for spec in victims])
        print(f"victims first: submitted {len(jobs)} job(s) to {args.executor} ({', '.join(job.job_id for job in jobs)}): "
              f"{', '.join(spec['victim'] for spec in victims)}", flush=True)
        for job in submitit.helpers.as_completed(jobs):
            spec = victims[jobs.index(job)]
            try:
                done = job.result()
            except Exception as error:
                done = {"victim": spec["victim"], "status": "failed", "seconds": 0.0, "error": f"job {job.job_id}: {type(error).__name__}"}
            detail = f": {done['error']} (its notebooks train it themselves)" if done["status"] == "failed" else ""
            print(f"  victim {done['victim']}: {done['status']} in {done['seconds']:.0f} s{detail}", flush=True)
    jobs = submit(executor, args, execution.execute, [(name, profile, parameters, point, force) for name, point in pending])
    print(f"submitted {len(jobs)} job(s) to {args.executor} ({', '.join(job.job_id for job in jobs)}); logs in {logs}", flush=True)
    for job in submitit.helpers.as_completed(jobs):
        name, point = pending[jobs.index(job)]
        try:
            result = job.result()
        except Exception as error:  # the job itself died (timeout, node failure): report it, keep the others
            result = {"notebook": execution.point_label(name, point), "status": "failed", "seconds": 0.0,
                      "error": f"job {job.job_id}: {type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}",
                      "output": str(job.paths.stderr)}
        results.append(result)
        progress(len(results), len(tasks), result)
    return results


def submit(executor, args, fn, calls: list[tuple]) -> list:
    """``fn(*call)`` for every call: one Slurm job array, or local jobs with GPUs of their own."""
    if args.executor == "local" and args.gpus:
        # submitit's local executor shows every job GPUs 0..gpus-1; give each job GPUs of its own, in turn
        jobs, count = [], local_gpu_count()
        for index, call in enumerate(calls):
            executor.update_parameters(local_visible_gpus=[(index * args.gpus + k) % count for k in range(args.gpus)])
            jobs.append(executor.submit(fn, *call))
        return jobs
    return executor.map_array(fn, *map(list, zip(*calls)))


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def check_cluster(args) -> None:
    """Refuse, before anything is submitted, the cluster settings that would stop or misdirect every job."""
    if args.executor == "inline":
        return
    from purify_lib.profiles import PROFILES, default_profile_name

    if args.profile is None:
        raise PurifyError(f"--executor {args.executor} needs --profile ({', '.join(PROFILES)}): the default would be chosen on this "
                          f"host ({default_profile_name()} here), not where the jobs run")
    if args.gpus < 0:
        raise PurifyError(f"--gpus {args.gpus} must be 0 or more")
    if args.executor == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise PurifyError(f"--executor slurm needs Slurm's {' and '.join(missing)} on PATH, and this host has none: submit from a "
                              "Slurm login node, or use --executor local")
        if args.profile == "paper" and args.gpus == 0:
            raise PurifyError("--profile paper on Slurm needs --gpus 1 or more: with --gpus 0 every job would train the paper's "
                              "width-64, 100-epoch victims on CPUs")
    if args.executor == "local" and args.gpus > local_gpu_count():
        raise PurifyError(f"--gpus {args.gpus} per job, but this host has {local_gpu_count()} GPU(s)")


def main(argv=None) -> int:
    from purify_lib.profiles import PROFILES, default_profile_name, get_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default: {default_profile_name()})")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks (name or number)")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE", help="a parameter for every notebook")
    parser.add_argument("-f", "--parameters-file", metavar="FILE", help="a YAML or JSON file of parameters (shared names, and a "
                        "section per notebook), checked as -p values are; -p wins over it")
    parser.add_argument("--print-parameters", action="store_true", help="print the notebooks' defaults under the profile as "
                        "such a file, and run nothing")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=[V1,V2]", help="run every notebook at each point of this grid")
    parser.add_argument("--force", action="store_true", help="run even the notebooks whose inputs have not changed")
    parser.add_argument("--plan", action="store_true", help="run nothing: list each notebook's victims and defense runs, "
                        "which are cached, and the minutes left")
    cluster = parser.add_argument_group("cluster (with --executor local or slurm)")
    cluster.add_argument("--executor", default="inline", help=f"one of {', '.join(EXECUTORS)} (default: inline, one after another here)")
    cluster.add_argument("--partition", default=None, help="Slurm partition")
    cluster.add_argument("--gpus", type=int, default=0, help="GPUs per job")
    cluster.add_argument("--cpus", type=int, default=2, help="CPU cores per job")
    cluster.add_argument("--mem", type=float, default=16, help="memory per job, GB")
    cluster.add_argument("--time", type=int, default=240, help="time limit per job, minutes")
    cluster.add_argument("--parallel", type=int, default=16, help="jobs of the array running at once")
    args = parser.parse_args(argv)

    from purify_lib.errors import choose

    choose("executor", args.executor, EXECUTORS)
    check_cluster(args)
    profile = get_profile(args.profile).name
    names = execution.select(args.only)
    if args.print_parameters:
        print(execution.parameters_file_text(names, profile), end="")
        return 0
    given = execution.parse_parameters(args.parameter)
    from_file = execution.read_parameters_file(args.parameters_file) if args.parameters_file else {}
    parameters = execution.merge_parameters(from_file, given)
    points = execution.expand_grid(args.grid)
    # before anything runs: a bad name or value fails here, not in a notebook's fifth cell
    execution.check_parameters(names, [{**parameters, **point} for point in points])
    tasks = [(name, point) for name in names for point in points]
    if args.plan:
        print(execution.plan(tasks, profile, parameters, args.force))
        return 0

    started, cold = time.perf_counter(), zoo_is_empty()
    estimate = execution.plan_minutes(tasks, profile, parameters, args.force)
    show_plan(estimate)
    if args.executor == "inline":
        results = run_inline(tasks, profile, parameters, args.force, estimate)
    else:
        results = run_submitit(tasks, profile, parameters, args.force, args)
    wall = time.perf_counter() - started
    print(summary(results, wall))
    print(f"run summary written to {write_run_summary(results, profile, wall, cold, estimate, tasks, parameters)}")
    from purify_lib.status import write_status

    print(f"status written to {write_status(execution.notebook_names(), profile)}")  # what reproduces, from the notebooks' records
    failed = [r["notebook"] for r in results if r["status"] == "failed"]
    if failed:
        print(f"error: {len(failed)} notebook(s) failed: {', '.join(failed)}; run the same command again to retry only these",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    invoke(main)
