"""Shared fixtures: hypothesis profiles and the backend parametrisation."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Every backend the store works on; tests that take the `backend` fixture run on each.
BACKENDS = ["npy", "zarr", "hdf5"]
SUFFIX = {"npy": ".ooc", "zarr": ".zarr", "hdf5": ".h5"}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of a backend."""
    return str(request.param)


@pytest.fixture
def store_path(tmp_path, backend):  # type: ignore[no-untyped-def]
    """A fresh path for a store of the current backend (the suffix selects it)."""
    return tmp_path / f"store{SUFFIX[backend]}"
