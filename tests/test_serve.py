"""Deployment end to end: a real Prefect server on loopback, `pam serve` registering the
nightly deployment, one run triggered through the API and seen to complete. Everything it
starts runs in its own process group and is killed by PID at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from models import every_window_model
from pam.ops.prefect_server import free_port, wait_healthy
from pam.store.store import Store
from synth import noise, write_wav

pytestmark = pytest.mark.prefect
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left; wait for the leader."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            os.killpg(proc.pid, 0)  # raises once the whole group is gone
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
        time.sleep(0.5)


def nightly_config(tmp_path: Path, cron: str, timezone: str, name: str) -> tuple[Path, Path]:
    """A one-file dump, the every-window model and a nightly config over them: (config, store)."""
    dump = tmp_path / "incoming"
    write_wav(dump / "AM01" / "20240501_020000.WAV", noise(4.0, 16000), 16000)
    model = every_window_model(tmp_path / "m.pt")
    store = tmp_path / "store"
    config = tmp_path / "nightly.yaml"
    config.write_text(f"model: '{model}'\nschedule:\n  cron: '{cron}'\n  timezone: {timezone}\n"
                      f"  dumps: ['{dump}']\n  store: '{store}'\n  name: {name}\n"
                      "detect:\n  num_workers: 0\nretries:\n  delay_s: 0\n")
    return config, store


def prefect_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment for a Prefect process of the test: own home, quiet, no API URL inherited."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
           **extra}
    env.pop("PREFECT_API_URL", None)
    return env


def test_pam_serve_registers_the_nightly_deployment_and_a_triggered_run_completes(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config, store = nightly_config(tmp_path, "0 2 * * *", "Europe/Berlin", "lab-test")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=tmp_path, start_new_session=True,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    serve = None
    try:
        wait_healthy(api, server, 120, logs / "server.log")
        serve = subprocess.Popen([str(BIN / "pam"), "serve", "--config", str(config)],
                                 env={**env, "PREFECT_API_URL": api}, cwd=REPO, start_new_session=True,
                                 stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT)
        with temporary_settings({PREFECT_API_URL: api}):
            deadline = time.monotonic() + 120
            deployment = None
            while deployment is None:
                assert serve.poll() is None, (logs / "serve.log").read_text()
                assert time.monotonic() < deadline, "the deployment never appeared"
                with get_client(sync_client=True) as client:
                    try:
                        deployment = client.read_deployment_by_name("pam-nightly/lab-test")
                    except Exception:  # noqa: BLE001 - not registered yet
                        time.sleep(0.5)
            assert deployment.parameters == {"config_file": str(config)}
            [schedule] = deployment.schedules
            assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "Europe/Berlin"
            run = run_deployment("pam-nightly/lab-test", timeout=180)
            assert run.state.type == StateType.COMPLETED, (run.state, (logs / "serve.log").read_text()[-3000:])
    finally:
        for proc in (serve, server):
            if proc is not None:
                stop(proc)
    assert serve.poll() is not None and server.poll() is not None
    det = Store(store).read_detections()
    assert len(det) == 2 and set(det["site"]) == {"AM01"}
    assert Store(store).read_runs().iloc[0]["status"] == "completed"


def test_pam_serve_without_a_server_runs_its_own_and_the_cron_starts_runs(tmp_path):
    """Prefect's temporary server has no scheduler, so `pam serve` starts a real one: the cron
    (every minute here) must create a run that completes, and stopping pam serve stops it."""
    import re

    import prefect.client.orchestration as orchestration
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config, store = nightly_config(tmp_path, "* * * * *", "UTC", "every-minute")
    env = prefect_env(tmp_path, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5", PREFECT_RUNNER_POLL_FREQUENCY="5")
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([str(BIN / "pam"), "serve", "--config", str(config)], env=env, cwd=REPO,
                             start_new_session=True, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    server_pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(r"local Prefect server for the schedule: (http://127\.0\.0\.1:\d+/api) \(pid (\d+)",
                                  log.read_text())):
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        api = m.group(1)
        server_pids = [int(m.group(2))]
        with temporary_settings({PREFECT_API_URL: api}):
            deadline = time.monotonic() + 200
            state = None
            while state != StateType.COMPLETED:
                assert serve.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, (state, log.read_text()[-3000:])
                with orchestration.get_client(sync_client=True) as client:
                    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=["every-minute"])))
                done = [r for r in runs if r.state and r.state.type == StateType.COMPLETED]
                state = StateType.COMPLETED if done else None
                time.sleep(2)
    finally:
        stop(serve)
    assert serve.poll() is not None
    time.sleep(1)
    alive = [p for p in server_pids if subprocess.run(["kill", "-0", str(p)], capture_output=True).returncode == 0]
    for p in alive:  # leave nothing running, whatever the assertion below says
        os.kill(p, signal.SIGKILL)
    assert alive == [], "the local Prefect server outlived pam serve"
    assert len(Store(store).read_detections()) == 2


def test_the_local_server_dies_with_its_process_even_by_kill_9(tmp_path):
    script = ("import sys, time\nfrom pam.ops.prefect_server import local_prefect_server\n"
              "with local_prefect_server() as (api, pid):\n    print(pid, api, flush=True)\n    time.sleep(120)\n")
    env = prefect_env(tmp_path)
    owner = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    server = None
    try:
        pid, api = owner.stdout.readline().split()
        server = int(pid)
        with urllib.request.urlopen(f"{api}/health", timeout=5) as r:
            assert r.status == 200
        owner.kill()  # SIGKILL: no finally block runs in the owner
        owner.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(server, 0)
                if Path(f"/proc/{server}/stat").read_text().split(")")[-1].split()[0] == "Z":
                    break  # exited; only its parent (init here) has not reaped it yet
            except (ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the Prefect server outlived the process that started it")
    finally:
        owner.kill()
        if server is not None:
            try:
                os.killpg(server, signal.SIGKILL)
            except ProcessLookupError:
                pass
