"""prefect.yaml stays true to the code: entrypoints are flows, parameters are theirs, and the
nightly schedule is the one configs/nightly.yaml declares (the two are kept in step by hand)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml

from pam.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def deployments() -> dict[str, dict]:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in doc["deployments"]}


def test_entrypoints_are_flows_that_take_the_given_parameters() -> None:
    found = deployments()
    assert {"nightly", "on-demand"} <= set(found)
    for name, d in found.items():
        file, func = d["entrypoint"].split(":")
        assert (ROOT / file).is_file(), f"{name}: {file} missing"
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert hasattr(flow, "fn") and hasattr(flow, "serve"), f"{name}: {func} is not a Prefect flow"
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d.get("parameters") or {}) <= accepted, f"{name}: parameters the flow does not take"


def test_nightly_schedule_matches_the_nightly_config() -> None:
    nightly = deployments()["nightly"]
    conf = load_config(ROOT / "configs" / "nightly.yaml")
    crons = [s["cron"] for s in nightly["schedules"]]
    assert crons == [conf.schedule.cron]
    assert nightly["parameters"]["config_file"].endswith("configs/nightly.yaml")
