"""run_all.py as a cluster user meets it: submitit's local executor over a shared zoo, grids,
resuming after a kill, and the same metrics from the same seed."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from purify_lib import execution
from purify_lib.errors import PurifyError

ROOT = Path(__file__).resolve().parents[1]
# Two cheap notebooks that both need the smoke Blended victim: the zoo must train it once.
PAIR = ["02", "05"]


def env_for(folder: Path, zoo: Path | None = None) -> dict:
    return {**os.environ, "PURIFY_ZOO": str(zoo or folder / "zoo"), "PURIFY_BUILD": str(folder / "build")}


def run_all(folder, *args, zoo=None):
    return subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--profile", "smoke", *args],
                          capture_output=True, text=True, env=env_for(folder, zoo), cwd=folder)


@pytest.fixture(scope="module")
def shared_zoo(tmp_path_factory):
    """One zoo for the tests that do not count trainings, so the smoke victim is trained once for them."""
    return tmp_path_factory.mktemp("shared") / "zoo"


def test_grid_expansion_and_labels():
    assert execution.expand_grid([]) == [{}]
    points = execution.expand_grid(["seed=[0,1]", "per_group=[20]"])
    assert points == [{"seed": 0, "per_group": 20}, {"seed": 1, "per_group": 20}]
    assert execution.point_label("02_feature_shift", {}) == "02_feature_shift"
    labels = {execution.point_label("02_feature_shift", p) for p in points}
    assert len(labels) == 2 and all(label.startswith("02_feature_shift@") for label in labels)
    with pytest.raises(PurifyError, match="must be a non-empty JSON list"):
        execution.expand_grid(["seed=3"])


def test_local_executor_runs_two_notebooks_over_one_shared_zoo(tmp_path, shared_zoo):
    """Two jobs need one victim: it is trained once, in any order of this module's tests (they share the zoo)."""
    cold = not shared_zoo.exists() or not any(shared_zoo.glob("*.json"))
    result = run_all(tmp_path, "--executor", "local", "--cpus", "1", "--only", *PAIR, zoo=shared_zoo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted 2 job(s) to local" in result.stdout
    for name in ("02_feature_shift", "05_data_purification"):
        assert (tmp_path / "build" / "smoke" / f"{name}.done.json").exists()
        assert json.loads((tmp_path / "build" / "claims" / f"{name}.smoke.json").read_text())["claims"]
    trained = (shared_zoo / "trained.log").read_text().splitlines()
    assert sum("blended-0.1-" in line for line in trained) == 1, trained  # both jobs used it; one trained it, here or earlier
    assert len(list((tmp_path / "build" / "submitit" / "smoke").glob("*/*_log.out"))) >= 2  # a log per job
    assert "plan, in minutes: 02_feature_shift ?, 05_data_purification ?" in result.stdout  # no needs recorded yet
    first = json.loads((tmp_path / "build" / "figures" / "smoke" / "run_summary.json").read_text())
    assert first["cold"] == cold and first["failed"] == [] and first["computed"]["victims"] == (1 if cold else 0)
    assert first["computed"]["defense runs"] > 0 or not cold
    # --plan's price of a cold run, from the needs records this run wrote: every notebook priced, the victim included
    assert first["plan_if_cold"]["unpriced"] == [] and first["plan_if_cold"]["minutes"] > 0 and first["plan_if_cold"]["vs_wall"] > 0
    assert sorted(n["notebook"] for n in first["notebooks"]) == ["02_feature_shift", "05_data_purification"] and first["machine"]["threads"]
    status = (tmp_path / "build" / "figures" / "smoke" / "STATUS.md").read_text()  # what reproduces, from the records just written
    assert re.search(r"\| 02_feature_shift \| \d/3 \|", status) and re.search(r"\| 05_data_purification \| \d/3 \|", status)
    assert "| blended:0.1 | " in status  # its victim, from the zoo record
    assert "| 02_feature_shift | victims | blended:0.01 |" in status  # what smoke leaves to paper, from 02's own record
    again = run_all(tmp_path, "--executor", "local", "--only", *PAIR, zoo=shared_zoo)
    assert again.returncode == 0 and "submitted" not in again.stdout  # nothing left to do: nothing submitted
    assert again.stdout.count("unchanged") >= 2
    assert "plan, in minutes: 02_feature_shift 0.0, 05_data_purification 0.0" in again.stdout
    second = json.loads((tmp_path / "build" / "figures" / "smoke" / "run_summary.json").read_text())
    assert not second["cold"] and second["computed"] == {"victims": 0, "defense runs": 0}


def test_grid_points_get_their_own_outputs(tmp_path, shared_zoo):
    result = run_all(tmp_path, "--only", "02", "--grid", "per_group=[20,30]", zoo=shared_zoo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    points = sorted((tmp_path / "build" / "grid").iterdir())
    assert len(points) == 2
    sizes = set()
    for point in points:
        stamp = json.loads((point / "smoke" / "02_feature_shift.done.json").read_text())
        sizes.add(stamp["parameters"]["per_group"])
        assert (point / "figures" / "smoke" / "feature_shift_tsne.png").exists()
    assert sizes == {20, 30}
    assert "about 0.0 min left by the plan, plus 1 notebook(s) it cannot price yet" in result.stdout  # after the first point
    summary = json.loads((tmp_path / "build" / "figures" / "smoke" / "run_summary.json").read_text())
    assert [n["notebook"].split("@")[0] for n in summary["notebooks"]] == ["02_feature_shift"] * 2


def test_killed_run_resumes_where_it_stopped(tmp_path, shared_zoo):
    process = subprocess.Popen([sys.executable, str(ROOT / "run_all.py"), "--profile", "smoke", "--only", *PAIR],
                               env=env_for(tmp_path, shared_zoo), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    first = tmp_path / "build" / "smoke" / "02_feature_shift.done.json"
    second = tmp_path / "build" / "smoke" / "05_data_purification.done.json"
    deadline = time.time() + 900
    while not first.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    time.sleep(3)  # into the second notebook
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists() and not second.exists()  # the interrupted notebook is not taken for finished
    resumed = run_all(tmp_path, "--only", *PAIR, zoo=shared_zoo)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "02_feature_shift: unchanged" in resumed.stdout and "05_data_purification: ran" in resumed.stdout
    assert second.exists()


def test_same_seed_same_metrics(isolated_cache):
    from purify_lib.defend import defend
    from purify_lib.train import Recipe
    from purify_lib.zoo import get_victim

    tiny = dict(profile="smoke", width=4, train_size=300, test_size=100, progress=False,
                recipe=Recipe(epochs=1, batch_size=100, lr=0.05, schedule="onecycle"))
    victim = get_victim("blended", 0.1, **tiny)
    first = defend(victim, "ft", epochs=2, cache=False)
    second = defend(victim, "ft", epochs=2, cache=False)
    assert first.history == second.history
    assert defend(victim, "ft", epochs=2, seed=1, cache=False).history != first.history  # the seed matters


def fake_slurm(folder: Path) -> str:
    """A PATH holding stand-ins for Slurm's sbatch and srun (they are only looked for, never run)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize("args, slurm, message", [
    (["--executor", "slurm"], True, "error: --executor slurm needs --profile (smoke, cpu, paper): the default would be chosen on this host"),
    (["--executor", "local"], False, "error: --executor local needs --profile"),
    (["--executor", "slurm", "--profile", "cpu"], False, "error: --executor slurm needs Slurm's sbatch and srun on PATH"),
    (["--executor", "slurm", "--profile", "paper"], True, "error: --profile paper on Slurm needs --gpus 1 or more"),
    (["--executor", "local", "--profile", "smoke", "--gpus", "1"], False, "error: --gpus 1 per job, but this host has 0 GPU(s)"),
])
def test_cluster_settings_that_would_misdirect_every_job_are_refused_before_submitting(tmp_path, args, slurm, message):
    env = {**env_for(tmp_path), "PATH": fake_slurm(tmp_path) if slurm else str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "build").exists()  # nothing was submitted or run


def _run_all_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all_module", ROOT / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeJob:
    def __init__(self, fn, args, visible=None):
        self.job_id, self.fn, self.args, self.visible, self.paths = str(id(self)), fn, args, visible, None

    def result(self):
        if self.fn is execution.train_victim:
            return {"victim": self.args[1]["victim"], "status": "trained", "seconds": 0.0}
        return {"notebook": self.args[0], "status": "ran", "seconds": 0.0, "claims": []}


def _fake_submitit(monkeypatch, submitted: list):
    """submitit's executor replaced by one that records what each job would run, in submission order."""
    import submitit

    class FakeExecutor:
        def __init__(self, folder, cluster):
            self.parameters = {}

        def update_parameters(self, **params):
            self.parameters.update(params)

        def submit(self, fn, *args):
            submitted.append(FakeJob(fn, args, list(self.parameters["local_visible_gpus"])))
            return submitted[-1]

        def map_array(self, fn, *lists):
            jobs = [FakeJob(fn, args) for args in zip(*lists)]
            submitted.extend(jobs)
            return jobs

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    monkeypatch.setattr(submitit.helpers, "as_completed", lambda jobs: iter(jobs))


def test_the_local_executor_gives_each_job_gpus_of_its_own(monkeypatch):
    import argparse

    run_all_module, submitted = _run_all_module(), []
    _fake_submitit(monkeypatch, submitted)
    monkeypatch.setattr(run_all_module, "local_gpu_count", lambda: 3)
    monkeypatch.setattr(run_all_module, "progress", lambda *args: None)
    monkeypatch.setattr(execution, "victims_to_train", lambda tasks, profile: [])
    args = argparse.Namespace(executor="local", gpus=1, time=10, cpus=1, mem=1, partition=None, parallel=4)
    tasks = [(name, {}) for name in ("01_fine_tuning", "02_feature_shift", "03_nft_mixup", "04_distance")]
    run_all_module.run_submitit(tasks, "paper", {}, True, args)
    assert [job.visible for job in submitted] == [[0], [1], [2], [0]]
    submitted.clear()
    run_all_module.run_submitit(tasks[:2], "paper", {}, True, argparse.Namespace(**{**vars(args), "gpus": 2}))
    assert [job.visible for job in submitted] == [[0, 1], [2, 0]]


def test_slurm_trains_the_victims_the_notebooks_need_first_each_once(monkeypatch, tmp_path, capsys):
    """From the notebooks' needs records: a victim two notebooks share is one job, one the zoo holds is none,
    one recorded before victims carried their spec is left to its notebook; then the notebooks, as an array."""
    import argparse

    run_all_module, submitted = _run_all_module(), []
    _fake_submitit(monkeypatch, submitted)
    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setenv("PURIFY_BUILD", str(tmp_path / "build"))
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "blended-0.1-held.json").write_text("{}")

    def victim(name, entry, spec=True):
        attack, rate = name.split(":")
        item = {"kind": "victim", "victim": name, "entry": entry, "cached": True, "seconds": 1.0, "cost": 60.0}
        return {**item, "spec": {"attack": attack, "rate": float(rate), "attack_params": {}, "victim_seed": 0}} if spec else item

    records = {"01_fine_tuning": [victim("badnets:0.1", "badnets-0.1-a"), victim("blended:0.1", "blended-0.1-held")],
               "02_feature_shift": [victim("badnets:0.1", "badnets-0.1-a"), victim("sig:0.1", "sig-0.1-b"), victim("wanet:0.1", "wanet-0.1-c", spec=False)]}
    monkeypatch.setattr(execution, "needs_record", lambda name, profile: {"items": records[name]})
    args = argparse.Namespace(executor="slurm", gpus=1, time=10, cpus=1, mem=1, partition=None, parallel=4)
    results = run_all_module.run_submitit([(name, {}) for name in records], "paper", {}, True, args)
    assert [(job.fn.__name__, job.args[-1]["victim"] if job.fn is execution.train_victim else job.args[0]) for job in submitted] == [
        ("train_victim", "badnets:0.1"), ("train_victim", "sig:0.1"), ("execute", "01_fine_tuning"), ("execute", "02_feature_shift")]
    assert submitted[0].args == ("paper", {"attack": "badnets", "rate": 0.1, "attack_params": {}, "victim_seed": 0,
                                           "entry": "badnets-0.1-a", "victim": "badnets:0.1"})
    assert [r["status"] for r in results] == ["ran", "ran"]
    assert "victims first: submitted 2 job(s) to slurm" in capsys.readouterr().out