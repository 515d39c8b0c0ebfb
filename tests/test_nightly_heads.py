"""Registered heads: the registry round trip and its refusals, and the nightly run applying the
heads its config names after detection, to new embeddings only, exactly once across runs, with
the similarity index kept in step and the summaries counting the heads' detections."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from typer.testing import CliRunner

from models import every_window_model
from pam.analysis.similarity import SimilarityIndex
from pam.analysis.store_index import index_folder
from pam.cli.main import app
from pam.config import AgileConfig, ConfigError, DetectConfig, PamConfig, RetriesConfig
from pam.ops.agile import plan_agile
from pam.ops.pipeline import run_nightly
from pam.store.embeddings import read_embeddings
from pam.store.store import Store
from pam.train.head_registry import read_heads, register_head, resolve_head
from pam.train.heads import Head, HeadCard, HeadError
from synth import noise, write_wav

RATE = 16000


def night(folder, day: int, n: int = 2) -> None:
    for i in range(n):
        start = datetime(2024, 5, day, 5, 0, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(folder / f"S{i % 2}" / start.strftime("%Y%m%d_%H%M%S.WAV"), noise(6.0, RATE, seed=10 * day + i),
                  RATE)


def config(model, **agile) -> PamConfig:
    return PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, embeddings=True),
                     retries=RetriesConfig(count=0, delay_s=0), agile=AgileConfig(**agile))


def half_head(emb, model_id: str) -> Head:
    """A one-class head that fires on about half of ``emb``'s windows (the first principal direction)."""
    x = emb.vectors.astype(np.float32)
    direction = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    return Head(HeadCard(embedding_model_id=model_id, embedding_dim=x.shape[1], classes=("quail",),
                         thresholds={"quail": 0.5}),
                {"w1": direction[:, None].astype(np.float16).astype(np.float32),
                 "b1": np.array([-float(np.median(x @ direction))], np.float32)})


def calls(head: Head, emb) -> set[tuple[str, int]]:
    hit = head.scores(emb.vectors, head.card.embedding_model_id)[:, 0] >= head.card.thresholds["quail"]
    rows = emb.rows.to_pandas()
    return set(zip(rows["recording_id"][hit], rows["start_sample"][hit]))


@pytest.fixture()
def registered(tmp_path):
    """A store after one night's detection with embeddings, and a head of its model registered in it."""
    night(tmp_path / "night1", 1)
    model = every_window_model(tmp_path / "m.pt")
    store = Store(tmp_path / "store")
    run_nightly([str(tmp_path / "night1")], store, config(model), progress=False)
    emb = read_embeddings(store)
    head = half_head(emb, emb.rows.column("model_id")[0].as_py())
    register_head(store, head, source=head.save(tmp_path / "quail.npz"), training={"windows": 12})
    return tmp_path, store, model, head


def test_registry_round_trip_and_refusals(registered, tmp_path):
    _tmp, store, _model, head = registered
    rows = read_heads(store)
    assert list(rows["head_id"]) == [head.head_id]
    row = rows.iloc[0]
    assert row["embedding_model_id"] == head.card.embedding_model_id and row["kind"] == "linear"
    assert row["classes_json"] == '["quail"]' and row["training_json"] == '{"windows": 12}'
    assert str(row["registered_at"].tz) == "UTC"
    assert (store.root / "heads" / f"head-{head.head_id}.npz").is_file()
    again = register_head(store, head)  # idempotent: the same files
    assert len(read_heads(store)) == 1 and again["head_id"] == head.head_id
    assert resolve_head(store, head.head_id).head_id == head.head_id  # by id
    assert resolve_head(store, tmp_path / "quail.npz").head_id == head.head_id  # by file
    with pytest.raises(HeadError, match=f"head 0123456789abcdef is neither a head file nor a head registered in "
                                        f"store .*its heads: {head.head_id}"):
        resolve_head(store, "0123456789abcdef")

    listing = CliRunner().invoke(app, ["heads", str(store.root)])
    assert listing.exit_code == 0 and head.head_id in listing.output and "quail" in listing.output
    applied = CliRunner().invoke(app, ["apply-head", str(store.root), head.head_id])
    assert applied.exit_code == 0, applied.output
    assert "2 recording(s) scored" in applied.output
    bad = CliRunner().invoke(app, ["apply-head", str(store.root), "nosuchhead"])
    assert bad.exit_code == 2 and "nosuchhead is neither a head file nor a head registered" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_nightly_applies_registered_heads_to_new_embeddings_exactly_once(registered):
    tmp, store, model, head = registered
    conf = config(model, heads=[head.head_id], similarity_index=True)
    night(tmp / "night2", 2)
    dumps = [str(tmp / "night1"), str(tmp / "night2")]

    run_nightly(dumps, store, conf, progress=False)  # night 2: detection, then the head on all unscored windows
    emb = read_embeddings(store)
    det = store.read_detections()
    mine = det[det["model_id"] == head.head_id]
    assert set(zip(mine["recording_id"], mine["start_sample"])) == calls(head, emb) and len(mine) == len(
        calls(head, emb)) > 0
    assert len(store.done_table(model_id=head.head_id)) == 4
    index = SimilarityIndex.open(index_folder(store, head.card.embedding_model_id))
    assert len(index) == len(emb)
    counts = store.read_summary("daily_counts")
    assert counts[counts["model_id"] == head.head_id]["detections"].sum() == len(mine)  # the summaries count them

    before = store.read_runs()
    run_nightly(dumps, store, conf, progress=False)  # nothing new: the head adds nothing
    det2 = store.read_detections()
    assert len(det2[det2["model_id"] == head.head_id]) == len(mine)
    head_runs = store.read_runs()
    head_runs = head_runs[(head_runs["flow"] == "apply-head") & ~head_runs["run_id"].isin(before["run_id"])]
    assert head_runs.empty or int(head_runs["recordings_done"].sum()) == 0

    night(tmp / "night3", 3, n=1)  # a third night: only its recording is new to the head
    third = run_nightly(dumps + [str(tmp / "night3")], store, conf, progress=False)
    assert [(h["head_id"], h["recordings_done"]) for h in third.heads] == [(head.head_id, 1)]
    assert third.indexes and third.indexes[0]["added"] > 0
    runs = store.read_runs()
    last = runs[runs["flow"] == "apply-head"].sort_values("started_at").iloc[-1]
    assert (last["recordings_done"], last["recordings_skipped"]) == (1, 4)
    emb3 = read_embeddings(store)
    det3 = store.read_detections()
    mine3 = det3[det3["model_id"] == head.head_id]
    assert set(zip(mine3["recording_id"], mine3["start_sample"])) == calls(head, emb3)
    assert not mine3.duplicated(["recording_id", "start_sample", "label"]).any()
    assert len(SimilarityIndex.open(index_folder(store, head.card.embedding_model_id))) == len(emb3)


def test_heads_the_run_cannot_feed_stop_it_before_any_work(registered, tmp_path, caplog):
    tmp, store, model, head = registered
    with pytest.raises(ConfigError, match="head feedfacefeedface is not registered in store .*pam heads"):
        plan_agile(store, config(model, heads=["feedfacefeedface"]))
    other = Head(HeadCard(embedding_model_id="birdnet-2.4", embedding_dim=1024, classes=("x",), thresholds={"x": 0.5}),
                 {"w1": np.zeros((1024, 1), np.float32), "b1": np.zeros(1, np.float32)})
    register_head(store, other)
    manifest = len(store.read_manifest())
    night(tmp / "night2", 2)
    with pytest.raises(ConfigError, match=f"head {other.head_id} reads embeddings of model birdnet-2.4, which this "
                                          "run does not compute"):
        run_nightly([str(tmp / "night2")], store, config(model, heads=[other.head_id]), progress=False)
    assert len(store.read_manifest()) == manifest  # nothing was scanned
    plan = plan_agile(store, config(model, heads="all"))  # all: the heads of this run's models
    assert plan.heads == [head.head_id]
    empty = Store(tmp_path / "no-heads").ensure()
    with caplog.at_level("WARNING", logger="pam.ops.agile"):
        assert plan_agile(empty, config(model, heads="all")).heads == []  # said, not silent
    assert "holds no registered head of this run's models" in caplog.text
    with pytest.raises(ValueError, match="detect.embeddings: true"):
        PamConfig(model=str(model), agile=AgileConfig(similarity_index=True))


def test_a_bad_head_in_the_config_is_one_line_before_prefect_starts(registered, monkeypatch):
    import yaml

    import pam.cli.detection

    tmp, store, model, _head = registered
    monkeypatch.setattr(pam.cli.detection, "_run_flow", lambda *a: pytest.fail("the flow started"))
    (tmp / "bad.yaml").write_text(yaml.safe_dump(config(model, heads=["feedfacefeedface"]).model_dump(mode="json")))
    res = CliRunner().invoke(app, ["detect", str(tmp / "night1"), "--store", str(store.root), "--config",
                                   str(tmp / "bad.yaml")])  # the Prefect flow is the default
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        f"error: agile.heads: head feedfacefeedface is not registered in store {store.root} (`pam heads "
        f"{store.root}` lists them; `pam train-head` registers one)"]


def test_the_flow_tasks_call_the_stages(registered, monkeypatch):
    import logging

    import flows.nightly
    from flows.nightly import apply_heads_task, index_task

    monkeypatch.setattr(flows.nightly, "get_run_logger", lambda: logging.getLogger("test"))  # no flow run here
    _tmp, store, model, head = registered
    plan = plan_agile(store, config(model, heads="all", similarity_index=True))
    plain = {"heads": plan.heads, "models": plan.models, "similarity_index": True}
    out = apply_heads_task.fn(str(store.root), plain)
    assert [(h["head_id"], h["recordings_done"]) for h in out] == [(head.head_id, 2)]
    assert apply_heads_task.fn(str(store.root), plain)[0]["recordings_done"] == 0
    indexes = index_task.fn(str(store.root), plain)
    assert indexes[0]["added"] == indexes[0]["indexed"] == len(read_embeddings(store))


def test_the_nights_last_lines_name_each_heads_detections(registered):
    """`pam detect` (no --verbose) ends with a line per head applied, as it does for the models."""
    import yaml

    tmp, store, model, head = registered
    night(tmp / "night2", 2)
    conf = config(model, heads=[head.head_id]).model_dump(mode="json")
    (tmp / "pam.yaml").write_text(yaml.safe_dump(conf))
    res = CliRunner().invoke(app, ["detect", str(tmp / "night1"), str(tmp / "night2"), "--store", str(store.root),
                                   "--config", str(tmp / "pam.yaml"), "--no-prefect", "--show", "0"])
    assert res.exit_code == 0, res.output
    det = store.read_detections()
    applied = det[det["model_id"] == head.head_id]
    assert f"head {head.head_id}: 4 recordings scored" in res.output
    assert f"{len(applied)} new detections" in res.output.split(f"head {head.head_id}:")[1].splitlines()[0]


def test_a_failing_head_or_index_does_not_stop_the_night(registered, monkeypatch, caplog):
    """One head that raises (or an index update that does) is logged and skipped; the stages
    return, so the run goes on to its summaries, and the next run retries."""
    import pam.analysis.store_index
    import pam.train.apply_head
    from pam.ops.agile import apply_heads_stage, index_stage

    _tmp, store, model, head = registered
    plan = plan_agile(store, config(model, heads="all", similarity_index=True))

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(pam.train.apply_head, "apply_head", broken)
    monkeypatch.setattr(pam.analysis.store_index, "update_index", broken)
    with caplog.at_level("ERROR", logger="pam.ops.agile"):
        assert apply_heads_stage(store, plan) == [{"head_id": head.head_id, "error": "disk full"}]
        assert index_stage(store, plan)[0]["error"] == "disk full"
    assert f"head {head.head_id} not applied: disk full" in caplog.text
    assert "similarity index not updated: disk full" in caplog.text


def test_registry_on_object_storage_is_refused_before_any_work(tmp_path):
    """The head registry is a folder of the store: `pam heads s3://...` stops with one line, and a
    train-head config that would register into an object store is refused when it loads, not
    after training; with register_in_store: false the same config loads."""
    from pam.train.train_head import load_head_config

    listing = CliRunner().invoke(app, ["heads", "s3://bucket/pam"])
    assert listing.exit_code == 2 and "not supported on object storage" in listing.output
    assert len(listing.output.strip().splitlines()) == 1
    labels = tmp_path / "labels.csv"
    labels.write_text("path,start_s,end_s,label\n")
    text = f"store: s3://bucket/pam\nout: {tmp_path / 'h.npz'}\ndata:\n  tables:\n    - path: {labels}\n"
    (tmp_path / "head.yaml").write_text(text)
    with pytest.raises(ConfigError, match="on object storage, where the head registry is not kept"):
        load_head_config(tmp_path / "head.yaml")
    (tmp_path / "head2.yaml").write_text(text + "register_in_store: false\n")
    assert load_head_config(tmp_path / "head2.yaml").store == "s3://bucket/pam"
