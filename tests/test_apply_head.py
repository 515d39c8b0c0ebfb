"""pam apply-head: a head scores the stored embeddings and commits its detections as a model of
its own, exactly once, reading no audio file; a second run adds nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import soundfile as sf
from typer.testing import CliRunner

from inotify import Opens
from models import every_window_model
import pam.store.schemas as schemas
import pam.train.apply_head as apply_head_module
from pam.cli.main import app
from pam.config import DetectConfig, PamConfig, RetriesConfig
from pam.detect.detection_rows import EMBEDDING_ROWS, vectors_as_binary
from pam.store.embeddings import embedding_files, read_embeddings
from pam.store.store import Flush, Store
from pam.train.apply_head import apply_head
from pam.train.heads import Head, HeadCard, HeadError
from pamstore import scan_and_detect
from synth import noise, write_wav


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apply")
    sites = []
    for i in range(4):
        start = datetime(2024, 5, 1, 23, 59, tzinfo=timezone.utc) + timedelta(minutes=i)
        site = tmp / "dump" / f"S{i % 2}"
        sites.append(site)
        write_wav(site / start.strftime("%Y%m%d_%H%M%S.WAV"), noise(6.0, 16000, seed=i), 16000)
    model = every_window_model(tmp / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, embeddings=True),
                     retries=RetriesConfig(count=0, delay_s=0))
    store = Store(tmp / "store")
    scan_and_detect(tmp / "dump", store, conf)
    emb = read_embeddings(store)
    model_id = emb.rows.column("model_id")[0].as_py()
    # a head whose one class fires on about half the windows: weights along the first principal direction
    x = emb.vectors.astype(np.float32)
    direction = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    bias = -float(np.median(x @ direction))
    head = Head(HeadCard(embedding_model_id=model_id, embedding_dim=x.shape[1], classes=("quail",),
                         thresholds={"quail": 0.5}),
                {"w1": direction[:, None].astype(np.float16).astype(np.float32), "b1": np.array([bias], np.float32)})
    path = head.save(tmp / "quail.npz")
    return tmp, store, head, path, emb, sorted(set(sites))


def expected_calls(head: Head, emb) -> set[tuple[str, int]]:
    z = emb.vectors.astype(np.float32) @ head.weights["w1"][:, 0] + head.weights["b1"][0]
    hit = 1 / (1 + np.exp(-z)) >= head.card.thresholds["quail"]
    rows = emb.rows.to_pandas()
    return set(zip(rows["recording_id"][hit], rows["start_sample"][hit]))


def test_apply_head_writes_its_calls_once_and_reads_no_audio(setup):
    tmp, store, head, path, emb, sites = setup
    want = expected_calls(head, emb)
    assert 0 < len(want) < len(emb)
    with Opens([tmp / "dump"] + sites) as opens:
        report = apply_head(store, path, windows_per_commit=5)  # several commits
        assert opens.files() == []  # not one audio file opened
        sf.info(str(next(sites[0].iterdir())))  # the counter does see opens
        assert len(opens.files()) >= 1
    assert report.recordings_done == 4 and report.windows == len(emb) and len(report.commits) >= 2
    det = store.read_detections()
    mine = det[det["model_id"] == head.head_id]
    assert set(zip(mine["recording_id"], mine["start_sample"])) == want
    assert len(mine) == len(want) and set(mine["label"]) == {"quail"}
    # times, paths and partitions as the source model's detections of the same windows
    source = det[det["model_id"] != head.head_id].set_index(["recording_id", "start_sample"])
    joined = mine.merge(source.reset_index(), on=["recording_id", "start_sample"], suffixes=("", "_src"))
    for col in ("path", "start_s", "end_s", "start_time", "site", "date", "device"):
        assert (joined[col].fillna("-") == joined[f"{col}_src"].fillna("-")).all(), col
    done = store.done_table(model_id=head.head_id)
    assert len(done) == 4 and done["detections"].sum() == len(want)


def test_second_run_adds_nothing(setup):
    tmp, store, head, path, emb, _ = setup
    before = store.snapshot().version()
    res = CliRunner().invoke(app, ["apply-head", str(store.root), str(path)])
    assert res.exit_code == 0, res.output
    assert "0 recording(s) scored" in res.output and "4 already done" in res.output
    assert store.snapshot().version() == before


def test_a_head_of_another_model_is_refused_in_one_line(setup, tmp_path):
    _, store, head, _path, _emb, _ = setup
    other = Head(HeadCard(embedding_model_id="birdnet-2.4", embedding_dim=1024, classes=("x",), thresholds={"x": 0.5}),
                 {"w1": np.zeros((1024, 1), np.float32), "b1": np.zeros(1, np.float32)})
    res = CliRunner().invoke(app, ["apply-head", str(store.root), str(other.save(tmp_path / "other.npz"))])
    assert res.exit_code == 2 and "no windows of model birdnet-2.4" in res.output


def season_store(root, months: int = 6, sites: int = 2, per_recording: int = 5, dim: int = 8,
                 run_settings: str = "k") -> Store:
    """A store of embeddings written as `pam detect` commits them, a night (one commit) per month:
    each site's recording of month m lies in its own (site, month) file."""
    store = Store(root).ensure()
    t0 = datetime(2024, 1, 10, 4, 0, tzinfo=timezone.utc)
    recs = [(f"rec-{s}-{m}", f"S{s}", t0.replace(month=1 + m)) for m in range(months) for s in range(sites)]
    manifest = pd.DataFrame({"recording_id": [r for r, _, _ in recs], "path": [f"/dump/{s}/{r}.wav" for r, s, _ in recs],
                             "site": [s for _, s, _ in recs], "device": "AM", "start_time": [t for _, _, t in recs],
                             "duration_s": per_recording * 3.0, "status": "ok"})
    for col in schemas.MANIFEST.names:
        if col not in manifest:
            manifest[col] = None
    store.write_manifest(manifest[schemas.MANIFEST.names])
    store.write_run({"run_id": "r", "flow": "detect", "status": "completed", "model_id": "emb",
                     "settings_hash": run_settings,
                     "config_json": '{"settings": {"window_s": 3.0}}'})
    rng = np.random.default_rng(0)
    for m in range(months):
        parts, done = [], []
        for rec, site, start in recs[m * sites:(m + 1) * sites]:
            starts = np.arange(per_recording, dtype=np.int64) * 48000
            n = per_recording
            parts.append(pa.table({
                "recording_id": [rec] * n, "start_sample": starts, "start_s": starts / 16000,
                "start_time": pa.array([start + timedelta(seconds=3 * i) for i in range(n)], schemas.UTC_TS),
                "model_id": ["emb"] * n, "settings_hash": ["k"] * n, "run_id": ["r"] * n,
                "embedding": vectors_as_binary(rng.standard_normal((n, dim)).astype(np.float16)),
                "site": [site] * n, "date": [start.date().isoformat()] * n}, schema=EMBEDDING_ROWS))
            done.append({"recording_id": rec, "model_id": "emb", "settings_hash": "k", "run_id": "r", "site": site,
                         "path": f"/dump/{site}/{rec}.wav", "windows": n, "audio_s": n * 3.0, "detections": 0,
                         "committed_at": start})
        store.commit("r", m, Flush(pa.schema(list(schemas.DETECTIONS) + list(schemas.DETECTION_PARTITIONS))
                                   .empty_table(), pa.Table.from_pylist(done, schema=schemas.DONE),
                                   pa.concat_tables(parts)))
    return store


def every_window_head(dim: int = 8) -> Head:
    return Head(HeadCard(embedding_model_id="emb", embedding_dim=dim, classes=("quail",), thresholds={"quail": 0.5}),
                {"w1": np.zeros((dim, 1), np.float32), "b1": np.array([5.0], np.float32)})


def count_reads(monkeypatch) -> dict[str, int]:
    reads: dict[str, int] = {}
    real = apply_head_module.score_embedding_file

    def counted(store, file, *args, **kwargs):
        reads[file.path] = reads.get(file.path, 0) + 1
        return real(store, file, *args, **kwargs)

    monkeypatch.setattr(apply_head_module, "score_embedding_file", counted)
    return reads


def test_each_commit_reads_only_the_files_of_its_recordings_days(tmp_path, monkeypatch):
    store = season_store(tmp_path / "store")
    reads = count_reads(monkeypatch)
    report = apply_head(store, every_window_head(), windows_per_commit=10)  # two recordings a commit
    assert len(report.commits) == 6 and report.windows == 60 and report.detections == 60
    files = {f.path for f in embedding_files(store)}
    assert set(reads) == files and set(reads.values()) == {1}  # before: every commit read every file of its site
    done = store.done_table(model_id=every_window_head().head_id)
    assert len(done) == 12 and set(done["windows"]) == {5}


def test_windows_outside_the_days_the_manifest_gives_are_still_scored(tmp_path, monkeypatch):
    store = season_store(tmp_path / "store")
    manifest = store.read_manifest()
    moved = manifest["recording_id"] == "rec-1-2"  # its clock changed in the manifest; its windows not yet redone
    manifest.loc[moved, "start_time"] = manifest.loc[moved, "start_time"] + pd.Timedelta(days=60)
    store.write_manifest(manifest)
    reads = count_reads(monkeypatch)
    report = apply_head(store, every_window_head(), windows_per_commit=10)
    assert report.windows == 60 and report.detections == 60
    done = store.done_table(model_id=every_window_head().head_id).set_index("recording_id")
    assert done.loc["rec-1-2", "windows"] == 5 and done.loc["rec-1-2", "detections"] == 5
    assert max(reads.values()) >= 2  # the date pruning missed its file; the window count sent it back for it


def test_a_runs_table_without_the_window_length_stops_before_any_commit(tmp_path):
    store = season_store(tmp_path / "store", run_settings="other")  # no run row of the embeddings' settings
    before = store.snapshot().version()
    with pytest.raises(HeadError, match="no run row says the window length of model emb"):
        apply_head(store, every_window_head(), windows_per_commit=10)
    assert store.snapshot().version() == before
