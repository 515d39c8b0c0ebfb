"""Reruns: over a folder of 1,000 processed files a rerun opens no audio file (counted by
inotify, which sees libsndfile's own opens; its speed is measured by bench/bench_rerun.py);
new settings and rewritten files replace rows instead of adding to them."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import soundfile as sf
import torch

from inotify import Opens
from models import every_window_model
from pam.config import DetectConfig, PamConfig
from pam.ops.pipeline import detect_stage, scan_stage
from pam.store.store import Store
from synth import noise, write_wav

N = 1000


def scan_and_detect(dump, store, conf):
    s = scan_stage(dump, store, conf)
    return detect_stage(store, [s.dump], conf, scan_problems=s.problems, progress=False)


def test_rerun_over_1000_processed_files_reads_no_audio(tmp_path):
    dump = tmp_path / "dump"
    template = write_wav(tmp_path / "template.wav", noise(0.5, 16000), 16000).read_bytes()
    sites = [dump / f"SITE{k:02d}" for k in range(10)]
    for i in range(N):
        folder = sites[i % 10]
        folder.mkdir(parents=True, exist_ok=True)
        start = datetime(2024, 5, 1, tzinfo=timezone.utc) + timedelta(minutes=10 * i)
        (folder / start.strftime("%Y%m%d_%H%M%S.WAV")).write_bytes(template)
    model = every_window_model(tmp_path / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=512))
    store = Store(tmp_path / "store")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is faster, and fair to other tests
    try:
        first = scan_and_detect(dump, store, conf)
    finally:
        torch.set_num_threads(threads)
    assert first.recordings_done == N

    with Opens([dump] + sites) as opens:
        t0 = time.perf_counter()
        again = scan_and_detect(dump, store, conf)
        elapsed = time.perf_counter() - t0
        assert opens.files() == []  # not one audio file opened, not even a header
        sf.info(str(sites[3] / next(p.name for p in sites[3].iterdir())))  # the counter does see opens
        assert len(opens.files()) >= 1
    assert again.recordings_done == 0 and again.recordings_skipped == N and again.failures == []
    print(f"rerun over {N} processed files: {elapsed:.2f} s (timed in bench/bench_rerun.py, not asserted here)")


def test_new_settings_or_a_rewritten_file_replace_rows_instead_of_adding_to_the_counts(tmp_path):
    from pam.ops.pipeline import run_nightly

    dump = tmp_path / "dump"
    for i, name in enumerate(["20240501_060000.WAV", "20240501_070000.WAV"]):
        write_wav(dump / "SITE" / name, noise(30.0, 16000, seed=i), 16000)
    model = every_window_model(tmp_path / "m.pt")  # class "a" fires on every window
    store = Store(tmp_path / "store")

    def night(hop_s: float) -> int:
        conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, hop_s=hop_s))
        _, report = run_nightly([str(dump)], store, conf, progress=False)
        daily = store.read_summary("daily_counts")
        assert int(daily.loc[daily["label"] == "a", "detections"].sum()) == len(store.read_detections())
        return report.recordings_done

    assert night(1.5) == 2
    windows_at_1_5 = len(store.read_detections())
    assert night(1.0) == 2  # new settings: both analysed again, their old rows replaced
    det = store.read_detections()
    assert det["settings_hash"].nunique() == 1 and len(det) > windows_at_1_5
    assert len(store.done_table()) == 2

    first = dump / "SITE" / "20240501_060000.WAV"
    write_wav(first, noise(15.0, 16000, seed=7), 16000)  # the file rewritten: half as long, new content
    before = len(det)
    assert night(1.0) == 1
    det = store.read_detections()
    assert det["recording_id"].nunique() == 2 and len(store.done_table()) == 2
    assert len(det) < before  # the old 30-s content's rows are gone, not kept beside the new ones


def test_a_site_clock_added_later_moves_song_meter_times_and_redoes_their_detections(tmp_path, caplog):
    import logging

    import pandas as pd

    from pam.ops.pipeline import run_nightly

    dump = tmp_path / "dump"
    write_wav(dump / "CREEK" / "SMA01234_20240415_064500.wav", noise(6.0, 16000), 16000)  # local time in the name
    write_wav(dump / "POND" / "20240415_064500.WAV", noise(6.0, 16000, seed=1), 16000)  # AudioMoth: UTC
    model = every_window_model(tmp_path / "m.pt")
    store = Store(tmp_path / "store")
    plain = PamConfig(model=str(model), detect=DetectConfig(num_workers=0))
    with caplog.at_level(logging.WARNING, logger="pam.ops.pipeline"):
        run_nightly([str(dump)], store, plain, progress=False)
    assert "site(s) CREEK have no timezone or utc_offset" in caplog.text
    first = store.read_detections().groupby("site")["start_time"].min()
    assert first["CREEK"] == pd.Timestamp("2024-04-15T06:45", tz="UTC")  # read as UTC, as warned

    clocked = plain.model_copy(update={"sites": PamConfig.model_validate(
        {"sites": {"CREEK": {"utc_offset": "-05:00"}}}).sites})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pam.ops.pipeline"):
        _, report = run_nightly([str(dump)], store, clocked, progress=False)
    assert "1 Song Meter recording(s)" in caplog.text
    assert report.recordings_done == 1 and report.recordings_skipped == 1  # only the moved one is redone
    manifest = store.read_manifest().set_index("site")
    assert manifest.loc["CREEK", "start_time"] == pd.Timestamp("2024-04-15T11:45", tz="UTC")
    det = store.read_detections()
    again = det.groupby("site")["start_time"].min()
    assert again["CREEK"] == pd.Timestamp("2024-04-15T11:45", tz="UTC") and again["POND"] == first["POND"]
    assert len(det) == len(store.read_detections().drop_duplicates(["recording_id", "start_s", "label"]))
    assert len(store.done_table()) == 2
