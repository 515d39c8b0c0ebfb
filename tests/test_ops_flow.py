"""The nightly flow scaled out: shards on a local Dask cluster of 2 worker processes give the
same table as one process; the run's failure report is published as a Prefect artifact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import every_window_model
from pam.config import DetectConfig, PamConfig, RetriesConfig, RunnerConfig
from pam.ops.pipeline import detect_stage, scan_stage
from pam.store.store import Store
from synth import noise, write_wav

pytestmark = pytest.mark.prefect
KEY = ["recording_id", "start_sample", "label"]


def table(store: Store) -> pd.DataFrame:
    return store.read_detections().drop(columns=["run_id"]).sort_values(KEY).reset_index(drop=True)


def test_detection_on_a_dask_cluster_of_two_workers_equals_one_process(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.nightly import nightly

    dump = tmp_path / "dump"
    for i in range(6):
        write_wav(dump / f"S{i % 2}" / f"20240501_0{i}0000.WAV", noise(3.0 + i, 16000, seed=i), 16000)
    (dump / "S1" / "20240501_090000.WAV").write_bytes(b"not audio" * 50)
    model = every_window_model(tmp_path / "m.pt")
    single_conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=8, flush_every=1),
                            retries=RetriesConfig(count=1, delay_s=0))
    single = Store(tmp_path / "single")
    s = scan_stage(dump, single, single_conf)
    detect_stage(single, [s.dump], single_conf, scan_problems=s.problems, progress=False)

    dask_conf = single_conf.model_copy(update={"runner": RunnerConfig(kind="dask", shards=4, dask_workers=2)})
    out = nightly([str(dump)], str(tmp_path / "dask"), dask_conf.model_dump(mode="json"))
    report = out["detect"]
    assert report["recordings_done"] == 6 and report["recordings_total"] == 6
    got, want = table(Store(tmp_path / "dask")), table(single)
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got.drop(columns=["score"]), want.drop(columns=["score"]))
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-4)
    runs = Store(tmp_path / "dask").read_runs()
    assert len(runs) == 1 and runs.iloc[0]["status"] == "completed" and runs.iloc[0]["recordings_done"] == 6

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pam-failures"])))
    mine = [a for a in artifacts if report["run_id"] in (a.data or "")]
    assert mine and "format not recognised" in mine[0].data and "## S1 (1 skipped)" in mine[0].data
