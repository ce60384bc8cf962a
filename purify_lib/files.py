"""Atomic file writes, content hashes and the one file lock, shared by the data cache, the victim zoo,
the defense cache and the figures' manifest."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import PurifyError

LOCK_TIMEOUT_ENV = "PURIFY_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 12 * 3600  # seconds: longer than any one victim or defense takes to compute while others wait


def lock_timeout() -> float:
    value = os.environ.get(LOCK_TIMEOUT_ENV)
    try:
        timeout = float(value) if value else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise PurifyError(f"{LOCK_TIMEOUT_ENV}={value!r} must be a number of seconds") from None
    if not timeout > 0:
        raise PurifyError(f"{LOCK_TIMEOUT_ENV}={value!r} must be a number of seconds above 0")
    return timeout


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = None):
    """Hold the exclusive lock ``path`` for the block: one job computes a victim or a defense while the
    others wait for it and then load it.

    ``flock`` where the filesystem has it (the kernel drops it when a job dies, however it dies); where
    it does not (some cluster filesystems), filelock's soft lock, a marker file naming its holder's host
    and process, which a later job breaks when that process is gone.  Either way a wait ends after
    ``timeout`` seconds (default ``$PURIFY_LOCK_TIMEOUT``, else 12 hours) with an error naming the lock file.
    """
    timeout = lock_timeout() if timeout is None else timeout
    lock = FileLock(str(path), timeout=timeout)
    with warnings.catch_warnings():  # the soft fallback warns on every acquisition; the docstring says it once
        warnings.filterwarnings("ignore", message="flock not supported on this filesystem")
        try:
            lock.acquire()
        except Timeout:
            raise PurifyError(f"waited {timeout:g} s for the lock {path}: another job holds it. If none is running (a job on "
                              f"another host was killed while it held it), delete the file; {LOCK_TIMEOUT_ENV} sets the wait") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds.

    A crash or an exception leaves no half-written ``final`` behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        # mkstemp makes the file private; give it the permissions an ordinary file gets, so a
        # zoo on a shared filesystem is readable by the other jobs and users it is shared with.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model, weights: Path, record_path: Path, record: dict) -> dict:
    """Write ``model``'s state dict, then ``record`` plus the checkpoint's SHA-256, each atomically.

    The record is written last: an entry exists only once both files are complete.
    """
    import json

    record = {**record, "sha256": save_tensors(model.state_dict(), weights)}
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record


def load_checkpoint(model, weights: Path, record_path: Path) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` into ``model``; return its record.

    Loads with ``weights_only=True`` (no pickled code runs) and only after the file's SHA-256
    matches its record; raises ``OSError`` (or a load error) otherwise.
    """
    import json

    record = json.loads(Path(record_path).read_text())
    model.load_state_dict(load_tensors(weights, record["sha256"]))
    return record


def save_tensors(state: dict, path: Path) -> str:
    """Write a dict of tensors atomically; return the file's SHA-256."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}, tmp)
        return sha256_file(tmp)


def load_tensors(path: Path, sha256: str) -> dict:
    """A dict of tensors written by ``save_tensors``, loaded with ``weights_only=True`` once its SHA-256 matches."""
    import torch

    if not Path(path).exists():
        raise OSError(f"{Path(path).name} missing")
    if sha256_file(path) != sha256:
        raise OSError(f"{Path(path).name}: hash differs from its record")
    return torch.load(path, map_location="cpu", weights_only=True)
