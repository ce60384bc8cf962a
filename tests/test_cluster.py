"""run_all.py as a cluster user meets it: submitit's local executor over a shared zoo, grids,
resuming after a kill, and the same metrics from the same seed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from purify_lib import runner
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
    assert runner.expand_grid([]) == [{}]
    points = runner.expand_grid(["seed=[0,1]", "per_group=[20]"])
    assert points == [{"seed": 0, "per_group": 20}, {"seed": 1, "per_group": 20}]
    assert runner.point_label("02_feature_shift", {}) == "02_feature_shift"
    labels = {runner.point_label("02_feature_shift", p) for p in points}
    assert len(labels) == 2 and all(label.startswith("02_feature_shift@") for label in labels)
    with pytest.raises(PurifyError, match="must be a non-empty JSON list"):
        runner.expand_grid(["seed=3"])


def test_local_executor_runs_two_notebooks_over_one_shared_zoo(tmp_path):
    result = run_all(tmp_path, "--executor", "local", "--cpus", "1", "--only", *PAIR)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted 2 job(s) to local" in result.stdout
    for name in ("02_feature_shift", "05_data_purification"):
        assert (tmp_path / "build" / "smoke" / f"{name}.done.json").exists()
        assert json.loads((tmp_path / "build" / "claims" / f"{name}.smoke.json").read_text())["claims"]
    trained = (tmp_path / "zoo" / "trained.log").read_text().splitlines()
    assert len(trained) == 1 and "blended-0.1-" in trained[0], trained  # both jobs used it; one trained it
    assert len(list((tmp_path / "build" / "submitit" / "smoke").glob("*/*_log.out"))) >= 2  # a log per job
    again = run_all(tmp_path, "--executor", "local", "--only", *PAIR)
    assert again.returncode == 0 and "submitted" not in again.stdout  # nothing left to do: nothing submitted
    assert again.stdout.count("unchanged") >= 2


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
