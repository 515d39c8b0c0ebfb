"""The operations config (schedule, runner, retries) is checked up front, and the schedule
helpers behind `pam serve` read it right."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from pam.cli.main import app
from pam.config import ConfigError, load_config
from pam.ops.schedule import load_for_serving, local_timezone, next_runs

CONFIGS = Path(__file__).parents[1] / "configs"


def test_nightly_example_config_is_valid_and_not_the_defaults():
    conf = load_config(CONFIGS / "nightly.yaml")
    assert conf.schedule.cron == "0 2 * * *" and conf.schedule.dumps and conf.schedule.store
    assert conf.scan.min_age_s > 0 and conf.scan.settle_s > 0


def test_operations_keys_name_the_key_and_what_is_allowed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("schedule:\n  cron: '0 2 * *'\n  timezone: Mars/Olympus\n  when: never\n"
                 "runner:\n  kind: slurm\n  shards: 0\nretries:\n  count: -1\n  delay_s: x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    lines = str(e.value).splitlines()
    assert len(lines) == 7 and all(line.startswith(str(p)) for line in lines)
    assert any("schedule.cron" in l and "needs 5 fields" in l for l in lines)
    assert any("schedule.timezone" in l and "unknown time zone 'Mars/Olympus'" in l for l in lines)
    assert any("schedule.when: unknown key" in l for l in lines)
    assert any("runner.kind" in l and "'slurm'" in l and "'threads' or 'dask'" in l for l in lines)
    assert any("runner.shards" in l and "greater than or equal to 1" in l for l in lines)
    assert any("retries.count" in l for l in lines) and any("retries.delay_s" in l for l in lines)


@pytest.mark.parametrize("text, message", [
    ("schedule: {cron: '61 2 * * *'}\n", "not a valid cron expression"),
    ("runner: {dask_address: 'tcp://x:8786'}\n", "dask_address is set but kind is 'threads'"),
    ("schedule: {dumps: [/data/in], store: /data/in/pam}\n", "schedule.store '/data/in/pam' is inside the watched dump"),
])
def test_broken_operations_configs(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_a_store_on_object_storage_is_in_no_watched_dump(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pathlib reads s3://bucket/pam as the folder ./s3:/bucket/pam
    p = tmp_path / "c.yaml"
    p.write_text(f"schedule: {{dumps: ['{tmp_path}'], store: 's3://bucket/pam'}}\n")
    conf = load_for_serving(p)
    assert conf.schedule.store == "s3://bucket/pam"
    res = CliRunner().invoke(app, ["serve", "--config", str(p), "--dry-run"])
    assert res.exit_code == 0 and "-> store s3://bucket/pam" in res.output, res.output


def test_serving_needs_dumps_and_a_store(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("schedule: {cron: '0 3 * * *'}\n")
    with pytest.raises(ConfigError) as e:
        load_for_serving(p)
    assert "schedule.dumps" in str(e.value) and "schedule.store" in str(e.value)
    res = CliRunner().invoke(app, ["serve", "--config", str(p), "--dry-run"])
    assert res.exit_code == 2 and "schedule.dumps" in res.output


def test_next_runs_follow_the_cron_in_its_time_zone(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("schedule: {cron: '30 2 * * 1', timezone: America/New_York, dumps: [/x], store: /y}\n")
    conf = load_config(p)
    zone = ZoneInfo("America/New_York")
    runs = next_runs(conf, 2, after=datetime(2024, 3, 5, 12, 0, tzinfo=zone))  # a Tuesday
    assert runs == [datetime(2024, 3, 11, 2, 30, tzinfo=zone), datetime(2024, 3, 18, 2, 30, tzinfo=zone)]
    assert [r.utcoffset().total_seconds() / 3600 for r in runs] == [-4, -4]  # after the DST change
    res = CliRunner().invoke(app, ["serve", "--config", str(p), "--dry-run"])
    assert res.exit_code == 0 and "cron '30 2 * * 1' (America/New_York)" in res.output and "next run:" in res.output


def test_local_timezone_is_an_iana_name(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert local_timezone() == "Europe/Berlin"
    monkeypatch.setenv("TZ", "not a zone")
    ZoneInfo(local_timezone())  # falls back to the system's zone or UTC, always valid


def test_next_runs_start_after_the_given_time_and_move_a_skipped_time_past_the_gap(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("schedule: {cron: '30 2 * * *', timezone: America/New_York, dumps: [/x], store: /y}\n")
    zone = ZoneInfo("America/New_York")
    runs = next_runs(load_config(p), 2, after=datetime(2024, 3, 9, 2, 30, tzinfo=zone))  # itself a run time
    # 2024-03-10 02:30 does not exist in New York (clocks jump 02:00 -> 03:00); Prefect runs it at 03:30 EDT
    assert [r.isoformat() for r in runs] == ["2024-03-10T03:30:00-04:00", "2024-03-11T02:30:00-04:00"]
