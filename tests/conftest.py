"""Shared fixtures: a small synthetic image set, so unit tests need neither data nor training."""
import pytest
import torch

from purify_lib.data import ImageSet


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    pixels = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet(pixels, labels)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point the zoo at an empty folder; the decoded dataset cache stays shared (it is keyed by source)."""
    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"
