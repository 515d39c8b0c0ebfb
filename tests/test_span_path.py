"""The spans data path (reader threads send raw integer samples; the device side converts,
mixes, resamples and cuts windows) against the windows path it must equal, on constructed
files: mono and stereo, 16 and 24 bit, WAV and FLAC, odd lengths, several sample rates, a file
shorter than a window, a truncated file and files that break after the scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from models import every_window_model
from pam.config import DetectConfig
from pam.detect.checkpoint import load_checkpoint
from pam.detect.dataset import RecordingTask, WindowBatches, span_plan
from pam.detect.detection import data_path, run_detection
from pam.detect.span_batches import SpanBatches
from pam.detect.span_reader import ReadLog, raw_dtype
from pam.detect.windows import window_grid
from pam.io.manifest import scan
from pam.store.store import Store

# name, rate, channels, subtype, frames
FILES = [
    ("AM01/20240501_000000.WAV", 22050, 1, "PCM_16", 22050 * 20 + 7),
    ("AM01/20240501_001000.flac", 48000, 2, "PCM_24", 48000 * 9 + 3),
    ("AM02/20240501_000000.WAV", 16000, 1, "PCM_16", 16000 * 2 + 1),  # shorter than a window
    ("AM02/20240501_001000.WAV", 44100, 2, "PCM_16", 44100 * 7 + 1),
    ("AM02/20240501_002000.flac", 32000, 1, "PCM_16", 32000 * 11 + 5),
    ("AM03/20240501_000000.WAV", 24000, 1, "PCM_24", 24000 * 6 + 2),
    ("AM03/20240501_001000.WAV", 8000, 1, "FLOAT", 8000 * 5 + 3),
]


def write_files(root: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    paths = []
    for name, rate, channels, subtype, frames in FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(frames) / rate
        audio = 0.2 * rng.standard_normal((frames, channels)) + 0.3 * np.sin(2 * np.pi * 1000 * t)[:, None]
        sf.write(path, np.clip(audio, -1, 1), rate, subtype=subtype)
        paths.append(path)
    return paths


def tasks_of(paths: list[Path]) -> list[RecordingTask]:
    out = []
    for i, p in enumerate(paths):
        info = sf.info(p)
        out.append(RecordingTask(i, str(p), info.samplerate, info.frames))
    return out


def windows_by_key(batches) -> tuple[dict[tuple[int, int], torch.Tensor], list[int]]:
    out, finished = {}, []
    for b in batches:
        for k, (r, s) in enumerate(zip(b["rec"].tolist(), b["start"].tolist())):
            assert (r, s) not in out
            out[(r, s)] = b["audio"][k]
        finished += b["finished"]
        assert not b["errors"]
    return out, finished


@pytest.mark.parametrize("readers", [0, 3])
@pytest.mark.parametrize("hop_s, max_span_s", [(1.5, 4.0), (1.0, 120.0), (4.0, 5.0)])
def test_spans_give_the_windows_path_windows(tmp_path, readers, hop_s, max_span_s):
    tasks = tasks_of(write_files(tmp_path))
    want, want_done = windows_by_key(WindowBatches(tasks, 16000, 3.0, hop_s, 10, max_span_s=max_span_s))
    got, got_done = windows_by_key(SpanBatches(tasks, 16000, 3.0, hop_s, 10, readers=readers,
                                               max_span_s=max_span_s))
    assert sorted(got) == sorted(want)  # same windows at the same sample positions
    assert sorted(got_done) == sorted(want_done) == list(range(len(tasks)))
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= 1e-6  # the same arithmetic on the same samples (bit-equal on this CPU)
    for i, task in enumerate(tasks):  # every window count is the grid's
        assert sum(1 for r, _ in got if r == i) == len(window_grid(task.frames, task.sample_rate, 3.0, hop_s))


@pytest.mark.parametrize("hop_s", [1.5, 4.0])
def test_spans_read_each_sample_once(tmp_path, hop_s):
    tasks = tasks_of(write_files(tmp_path))
    log = ReadLog()
    list(SpanBatches(tasks, 16000, 3.0, hop_s, 10, max_span_s=4.0, log=log))
    for task in tasks:
        ranges = sorted((lo, hi) for r, lo, hi in log.ranges if r == task.index)
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))  # no sample twice
        read = sum(hi - lo for lo, hi in ranges)
        grid = window_grid(task.frames, task.sample_rate, 3.0, hop_s)
        needed = np.zeros(task.frames, dtype=bool)  # the samples some span's resampling needs
        for span in span_plan(grid, 16000, 4.0):
            needed[max(0, span.lo):max(0, span.hi)] = True
        assert read == int(needed.sum())
        if hop_s <= 3.0:  # overlapping windows: all of the file, once
            assert ranges[0][0] == 0 and read == task.frames
        elif len(grid) > 1:  # duty-cycled: most of the gaps between windows are not read at all
            assert read < task.frames
    # the windows path reads more: the resampling context at every span's edges, twice
    assert log.frames() <= sum(t.frames for t in tasks)


def test_raw_widths():
    assert raw_dtype("PCM_16") == torch.int16
    assert raw_dtype("PCM_24") == torch.int32
    assert raw_dtype("FLOAT") == torch.float32


def detections(store: Store) -> pd.DataFrame:
    det = store.read_detections().drop(columns=["run_id"])
    return det.sort_values(["recording_id", "start_sample", "label"]).reset_index(drop=True)


def failures(report) -> list[tuple[str, str]]:
    return sorted((f["path"], f["reason"]) for f in report.failures)


def test_detections_equal_row_by_row_with_bad_files(tmp_path):
    paths = write_files(tmp_path / "dump")
    truncated = tmp_path / "dump" / "AM04" / "20240501_000000.WAV"  # the header promises more than is there
    truncated.parent.mkdir()
    sf.write(truncated, np.zeros(16000 * 8, dtype=np.int16), 16000, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[: 44 + 2 * 16000 * 5 + 1])
    model = load_checkpoint(every_window_model(tmp_path / "model.pt"))
    reports, tables = {}, {}
    for path in ("windows", "spans"):
        store = Store(tmp_path / f"store-{path}")
        rows = scan(tmp_path / "dump", store).rows
        if path == "windows":
            assert "truncated" in set(rows["status"])
        for victim, data in ((paths[3], b"gone bad"), (paths[1], paths[1].read_bytes()[: 20000])):
            original = victim.read_bytes()
            victim.write_bytes(data)  # broken after the scan: one whole, one cut off mid-stream
            victim.with_suffix(".keep").write_bytes(original)
        reports[path] = run_detection(store, rows, model, DetectConfig(data_path=path, batch_size=16, flush_every=2,
                                                                       num_workers=2), progress=False)
        tables[path] = detections(store)
        for victim in (paths[3], paths[1]):
            victim.write_bytes(victim.with_suffix(".keep").read_bytes())
    a, b = tables["windows"], tables["spans"]
    assert len(a) == len(b) > 0  # 'a' fires on every window: every window is a row
    pd.testing.assert_frame_equal(a.drop(columns=["score"]), b.drop(columns=["score"]))
    assert float(np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max()) <= 1e-3
    assert failures(reports["spans"]) == failures(reports["windows"])
    assert {p for p, _ in failures(reports["spans"])} == {str(paths[3]), str(paths[1])}
    assert reports["spans"].recordings_done == reports["windows"].recordings_done == len(paths) - 1


def test_auto_data_path():
    assert data_path(DetectConfig(), torch.device("cpu")) == "windows"
    assert data_path(DetectConfig(), torch.device("cuda")) == "spans"
    assert data_path(DetectConfig(data_path="spans"), torch.device("cpu")) == "spans"
