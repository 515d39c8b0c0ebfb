"""Input safety: dumps are only ever read, never written, renamed or deleted; a store inside
a dump is refused everywhere; odd names work; files still being copied wait."""

from __future__ import annotations

import builtins
import os
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

import pam.io.manifest
from models import every_window_model
from pam.cli.main import app
from pam.config import ConfigError, DetectConfig, PamConfig, ScanConfig, load_config
from pam.io.manifest import ScanError, scan
from pam.ops.pipeline import detect_stage, run_nightly, scan_stage
from pam.store.store import Store
from synth import audiomoth_comment, noise, write_wav

runner = CliRunner()


def snapshot(folder: Path) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns, st.st_mode, st.st_ino)
    return out


@pytest.fixture
def model(tmp_path) -> Path:
    return every_window_model(tmp_path / "m.pt")


def test_spaces_and_non_ascii_names_work_end_to_end(tmp_path, model):
    dump = tmp_path / "dump ü ß 2024"
    am = write_wav(dump / "Sité Ä 1" / "20240501_020000.WAV", noise(4.0, 16000), 16000,
                   comment=audiomoth_comment("02:00:00 01/05/2024"))
    sm = write_wav(dump / "Ñandú creek" / "Ñandú_20240501_030000.flac", noise(4.0, 16000, seed=1), 16000)
    store = tmp_path / "störe with spaces"
    before = snapshot(dump)
    res = runner.invoke(app, ["detect", str(dump), "--store", str(store), "--model", str(model), "--no-prefect",
                              "--workers", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 recordings scored" in res.output
    det = Store(store).read_detections()
    assert set(det["path"]) == {str(am), str(sm)}
    assert set(det["site"]) == {"Sité Ä 1", "Ñandú creek"}
    assert len(Store(store).detection_files(sites=["Ñandú creek"])) == 1
    assert snapshot(dump) == before


def test_recordings_are_only_opened_for_reading(tmp_path, model, monkeypatch):
    dump = tmp_path / "dump"
    for i in range(3):
        write_wav(dump / "A" / f"20240501_0{i}0000.WAV", noise(3.0, 16000, seed=i), 16000)
    write_wav(dump / "A" / "SM_20240501_040000.flac", noise(3.0, 16000), 16000)
    (dump / "A" / "20240501_050000.WAV").write_bytes(b"junk" * 100)
    inside = str(dump)
    opened = []
    real_open, real_os_open, real_sf = builtins.open, os.open, sf.SoundFile

    def check_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(inside):
            opened.append(("open", str(file), mode))
        return real_open(file, mode, *args, **kwargs)

    def check_os_open(path, flags, *args, **kwargs):
        if str(path).startswith(inside):
            opened.append(("os.open", str(path), "w" if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) else "r"))
        return real_os_open(path, flags, *args, **kwargs)

    class CheckSoundFile(real_sf):
        def __init__(self, file, mode="r", *args, **kwargs):
            if str(file).startswith(inside):
                opened.append(("SoundFile", str(file), mode))
            super().__init__(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", check_open)
    monkeypatch.setattr(os, "open", check_os_open)
    monkeypatch.setattr(sf, "SoundFile", CheckSoundFile)
    before = snapshot(dump)
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0))
    run_nightly([str(dump)], Store(tmp_path / "store"), conf, progress=False)
    monkeypatch.undo()
    assert {kind for kind, _, _ in opened} >= {"open", "SoundFile"}
    assert all(mode in ("r", "rb") for _, _, mode in opened), [o for o in opened if o[2] not in ("r", "rb")]
    assert snapshot(dump) == before  # nothing created, renamed, deleted or touched


def test_a_store_inside_the_dump_is_refused_everywhere(tmp_path, model):
    dump = tmp_path / "dump"
    write_wav(dump / "A" / "20240501_020000.WAV", noise(2.0, 16000), 16000)
    inside = dump / "A" / "store"
    with pytest.raises(ScanError, match="must not be inside the dump"):
        scan(dump, Store(inside))
    with pytest.raises(ScanError, match="must not be inside the dump"):
        detect_stage(Store(dump), [str(dump)], PamConfig(model=str(model)))
    res = runner.invoke(app, ["detect", str(dump), "--store", str(inside), "--model", str(model), "--no-prefect"])
    assert res.exit_code != 0 and "must not be inside the dump" in res.output
    cfg = tmp_path / "nightly.yaml"
    cfg.write_text(f"schedule:\n  dumps: ['{dump}']\n  store: '{inside}'\n")
    with pytest.raises(ConfigError, match="schedule.store .* is inside the watched dump"):
        load_config(cfg)
    res = runner.invoke(app, ["serve", "--config", str(cfg), "--dry-run"])
    assert res.exit_code == 2 and "inside the watched dump" in res.output
    assert not inside.exists()


def test_a_file_name_that_is_not_utf8_is_reported_not_fatal(tmp_path):
    dump = tmp_path / "dump"
    write_wav(dump / "A" / "20240501_020000.WAV", noise(2.0, 8000), 8000)
    raw = os.path.join(os.fsencode(dump / "A"), b"caf\xe9_20240501_030000.wav")
    with open(raw, "wb") as fh:
        fh.write((dump / "A" / "20240501_020000.WAV").read_bytes())
    rows = scan(dump, Store(tmp_path / "store")).rows.set_index("status")
    assert rows.loc["ok", "path"].endswith("20240501_020000.WAV")
    assert "not valid UTF-8" in rows.loc["unreadable", "reason"]


def test_a_file_growing_during_the_scan_waits_for_the_next_run(tmp_path):
    dump = tmp_path / "dump"
    done = write_wav(dump / "A" / "20240501_020000.WAV", noise(2.0, 8000), 8000)
    growing = dump / "A" / "20240501_030000.WAV"
    data = done.read_bytes()
    growing.write_bytes(data[:1000])
    stop = threading.Event()

    def copy_slowly():
        with open(growing, "ab") as fh:
            for i in range(1000, len(data), 500):
                if stop.is_set():
                    break
                fh.write(data[i:i + 500])
                fh.flush()
                time.sleep(0.02)

    writer = threading.Thread(target=copy_slowly)
    writer.start()
    try:
        result = scan(dump, Store(tmp_path / "store"), PamConfig(scan=ScanConfig(settle_s=0.2)))
    finally:
        stop.set()
        writer.join()
    assert result.pending == [str(growing)]
    assert "still being copied" in result.pending_reasons[str(growing)]
    assert result.rows["path"].tolist() == [str(done)]


def test_a_file_that_changes_while_it_is_read_waits_for_the_next_run(tmp_path, monkeypatch):
    dump = tmp_path / "dump"
    write_wav(dump / "A" / "20240501_020000.WAV", noise(2.0, 8000), 8000)
    victim = write_wav(dump / "A" / "20240501_030000.WAV", noise(2.0, 8000, seed=1), 8000)
    real_probe = pam.io.manifest.probe

    def probe_while_copying(path):
        info = real_probe(path)
        if Path(path) == victim:
            with open(victim, "ab") as fh:  # the copy goes on meanwhile
                fh.write(b"\0" * 512)
        return info

    monkeypatch.setattr(pam.io.manifest, "probe", probe_while_copying)
    store = Store(tmp_path / "store")
    conf = PamConfig()
    summary = scan_stage(dump, store, conf)
    assert summary.pending == 1 and summary.files == 1
    [problem] = [p for p in summary.problems if p["status"] == "pending"]
    assert problem["path"] == str(victim) and problem["site"] == "A" and "while it was read" in problem["reason"]
    monkeypatch.undo()
    assert scan(dump, store).rows["path"].tolist() == sorted(str(p) for p in dump.rglob("*.WAV"))


def test_a_file_being_replaced_keeps_its_old_row_meanwhile(tmp_path):
    dump = tmp_path / "dump"
    f = write_wav(dump / "A" / "20240501_020000.WAV", noise(2.0, 8000), 8000)
    store = Store(tmp_path / "store")
    first = scan(dump, store).rows.iloc[0]
    write_wav(f, noise(3.0, 8000), 8000)  # being rewritten now: too young to read
    scan(dump, store, PamConfig(scan=ScanConfig(min_age_s=600)))
    row = store.read_manifest().set_index("path").loc[str(f)]
    assert row["status"] == "ok" and row["recording_id"] == first["recording_id"]  # not marked missing
