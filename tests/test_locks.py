"""The one file lock (``files.locked``) on filesystems with and without flock: a dead holder's lock is
broken, a wait ends in an error naming the lock file, and the zoo trains under the fallback."""
import errno
import fcntl
import subprocess
import sys
import time

import pytest

from purify_lib.errors import PurifyError
from purify_lib.files import locked

HOLDER = """
import errno, fcntl, sys, time
if sys.argv[2] == "no-flock":
    def missing(*args, **kwargs):
        raise OSError(errno.ENOSYS, "flock is not supported here")
    fcntl.flock = missing
from purify_lib.files import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def no_flock(monkeypatch):
    def missing(*args, **kwargs):
        raise OSError(errno.ENOSYS, "flock is not supported here")

    monkeypatch.setattr(fcntl, "flock", missing)


def hold(tmp_path, monkeypatch, mode):
    """A child process holding the lock ``victim.lock``; with ``no-flock``, flock fails there and here alike."""
    if mode == "no-flock":
        no_flock(monkeypatch)
    path = tmp_path / "victim.lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return path, process


@pytest.mark.parametrize("mode", ["flock", "no-flock"])
def test_a_lock_held_by_a_live_job_times_out_naming_the_lock_file(tmp_path, monkeypatch, mode):
    path, holder = hold(tmp_path, monkeypatch, mode)
    try:
        started = time.perf_counter()
        with pytest.raises(PurifyError, match=f"waited 0.5 s for the lock {path}: another job holds it"):
            with locked(path, timeout=0.5):
                pass
        assert time.perf_counter() - started < 30
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("mode", ["flock", "no-flock"])
def test_a_lock_left_by_a_killed_job_is_taken_over(tmp_path, monkeypatch, mode):
    path, holder = hold(tmp_path, monkeypatch, mode)
    holder.kill()  # as Slurm kills a job: no chance to release
    holder.wait()
    assert path.exists()
    with locked(path, timeout=20):
        pass


def test_the_zoo_trains_and_loads_under_the_fallback_lock(tmp_path, monkeypatch, isolated_cache):
    from purify_lib.train import Recipe
    from purify_lib.zoo import get_victim

    no_flock(monkeypatch)
    tiny = dict(profile="smoke", width=2, train_size=100, test_size=50, progress=False, recipe=Recipe(epochs=1, batch_size=50))
    first = get_victim("badnets", 0.1, **tiny)
    again = get_victim("badnets", 0.1, **tiny)
    assert not first.cache_hit and again.cache_hit


def test_a_bad_lock_timeout_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PURIFY_LOCK_TIMEOUT", "soon")
    with pytest.raises(PurifyError, match="PURIFY_LOCK_TIMEOUT='soon' must be a number of seconds"):
        with locked(tmp_path / "x.lock"):
            pass
