import os
from datetime import datetime, timezone

import pytest

import pam.io.manifest as manifest_mod
from pam.config import PamConfig, ScanConfig, SiteConfig
from pam.io.manifest import ScanError, scan
from pam.store.store import Store
from synth import audiomoth_comment, noise, write_wav

UTC = timezone.utc


def snapshot(folder):
    """Everything about a folder tree that pam must never change."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture
def dump(tmp_path):
    d = tmp_path / "dump"
    write_wav(d / "AM01" / "20240501_020000.WAV", noise(4.0, 48000), 48000,
              comment=audiomoth_comment("04:00:00 01/05/2024", offset="+2"))
    write_wav(d / "AM01" / "20240501_030000.wav", noise(4.0, 48000, seed=1), 48000)
    write_wav(d / "SM-B" / "deep" / "SMB01_20240501_020000.Wav", noise(4.0, 22050, seed=2), 22050)
    (d / "AM01" / "20240501_040000.WAV").touch()  # zero bytes
    (d / "AM01" / "notes.wav").write_text("not audio " * 50)
    good = (d / "AM01" / "20240501_020000.WAV").read_bytes()
    (d / "AM01" / "20240501_050000.WAV").write_bytes(good[: len(good) // 2])  # truncated
    (d / "AM01" / "._20240501_020000.WAV").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (d / "AM01" / "CONFIG.TXT").write_text("AudioMoth config")
    (d / ".Trashes").mkdir()
    write_wav(d / ".Trashes" / "20240101_000000.WAV", noise(1.0, 8000), 8000)
    (d / "System Volume Information").mkdir()
    write_wav(d / "System Volume Information" / "20240101_000000.WAV", noise(1.0, 8000), 8000)
    return d


def test_scan_records_every_file_with_status_and_reason(dump, tmp_path):
    store = Store(tmp_path / "store")
    before = snapshot(dump)
    result = scan(dump, store)
    assert snapshot(dump) == before  # nothing written into the dump
    rows = result.rows.set_index(result.rows["path"].map(lambda p: os.path.relpath(p, dump)))
    assert sorted(rows.index) == sorted([
        "AM01/20240501_020000.WAV", "AM01/20240501_030000.wav", "AM01/20240501_040000.WAV",
        "AM01/20240501_050000.WAV", "AM01/notes.wav", "SM-B/deep/SMB01_20240501_020000.Wav",
    ])
    assert rows.loc["AM01/20240501_040000.WAV", "status"] == "empty"
    assert rows.loc["AM01/notes.wav", "status"] == "not_audio"
    assert rows.loc["AM01/20240501_050000.WAV", "status"] == "truncated"
    for bad in ["AM01/20240501_040000.WAV", "AM01/notes.wav", "AM01/20240501_050000.WAV"]:
        reason = rows.loc[bad, "reason"]
        assert isinstance(reason, str) and reason and "\n" not in reason

    am = rows.loc["AM01/20240501_020000.WAV"]
    assert am["status"] == "ok" and am["site"] == "AM01"
    assert am["start_time"] == datetime(2024, 5, 1, 2, 0, tzinfo=UTC)  # 04:00 at UTC+2
    assert am["time_source"] == "comment" and am["device"] == "24526B065D325963"
    assert (am["sample_rate"], am["channels"], am["frames"]) == (48000, 1, 4 * 48000)
    assert am["duration_s"] == pytest.approx(4.0)
    sm = rows.loc["SM-B/deep/SMB01_20240501_020000.Wav"]
    assert sm["recorder"] == "songmeter" and sm["site"] == "deep" and sm["device"] == "SMB01"
    assert rows.loc["AM01/20240501_030000.wav", "time_source"] == "filename"
    assert rows["recording_id"].is_unique
    # the store's manifest holds the same rows
    assert set(store.read_manifest()["path"]) == set(result.rows["path"])


def test_rescan_opens_only_new_or_changed_files(dump, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    first = scan(dump, store)
    opened = []
    real = manifest_mod.probe
    monkeypatch.setattr(manifest_mod, "probe", lambda p: opened.append(p) or real(p))
    second = scan(dump, store)
    assert opened == [] and second.reopened == 0
    assert second.rows.sort_values("path")["recording_id"].tolist() == first.rows.sort_values("path")["recording_id"].tolist()

    changed = dump / "AM01" / "20240501_030000.wav"
    write_wav(changed, noise(6.0, 48000, seed=9), 48000)
    third = scan(dump, store)
    assert [os.path.basename(p) for p in opened] == ["20240501_030000.wav"]
    assert third.reopened == 1
    row = third.rows[third.rows["path"] == str(changed)].iloc[0]
    assert row["frames"] == 6 * 48000


def test_vanished_files_are_marked_missing(dump, tmp_path):
    store = Store(tmp_path / "store")
    scan(dump, store)
    gone = dump / "AM01" / "20240501_030000.wav"
    gone.unlink()
    scan(dump, store)
    m = store.read_manifest().set_index("path")
    assert m.loc[str(gone), "status"] == "missing"


def test_site_rules(dump, tmp_path):
    by_prefix = scan(dump, Store(tmp_path / "s1"), PamConfig(scan=ScanConfig(site_from="prefix"))).rows
    sites = dict(zip(by_prefix["path"].map(os.path.basename), by_prefix["site"]))
    assert sites["SMB01_20240501_020000.Wav"] == "SMB01"
    assert sites["20240501_020000.WAV"] == "AM01"  # no prefix: falls back to the folder
    conf = PamConfig(scan=ScanConfig(site_from="regex", site_regex=r"^(?P<site>[^/]+)/"))
    by_regex = scan(dump, Store(tmp_path / "s2"), conf).rows
    sites = dict(zip(by_regex["path"].map(os.path.basename), by_regex["site"]))
    assert sites["SMB01_20240501_020000.Wav"] == "SM-B"


def test_songmeter_time_uses_site_time_zone(tmp_path):
    d = tmp_path / "dump"
    write_wav(d / "CREEK" / "CREEK_20240501_060000.wav", noise(1.0, 8000), 8000)
    conf = PamConfig(sites={"CREEK": SiteConfig(timezone="America/New_York")})
    row = scan(d, Store(tmp_path / "s"), conf).rows.iloc[0]
    assert row["start_time"] == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)  # EDT = UTC-4


def test_files_still_being_copied_wait_for_next_run(tmp_path):
    d = tmp_path / "dump"
    old = write_wav(d / "A" / "20240501_000000.WAV", noise(1.0, 8000), 8000)
    os.utime(old, (0, datetime(2024, 5, 1, tzinfo=UTC).timestamp()))
    fresh = write_wav(d / "A" / "20240501_010000.WAV", noise(1.0, 8000), 8000)
    result = scan(d, Store(tmp_path / "s"), PamConfig(scan=ScanConfig(min_age_s=600)))
    assert result.pending == [str(fresh)]
    assert result.rows["path"].tolist() == [str(old)]


def test_bad_dumps_and_store_inside_dump(tmp_path):
    with pytest.raises(ScanError, match="does not exist"):
        scan(tmp_path / "nope", Store(tmp_path / "s"))
    f = tmp_path / "file.wav"
    f.write_text("x")
    with pytest.raises(ScanError, match="not a folder"):
        scan(f, Store(tmp_path / "s"))
    d = tmp_path / "dump"
    d.mkdir()
    with pytest.raises(ScanError, match="must not be inside the dump"):
        scan(d, Store(d / "store"))
    assert not (d / "store").exists()


def test_an_unscannable_dump_is_one_problem_that_names_its_path_once(tmp_path):
    from pam.ops.pipeline import scan_stage

    s = scan_stage(tmp_path / "nope", Store(tmp_path / "s"), PamConfig())
    assert s.error == f"{tmp_path / 'nope'}: dump folder does not exist"
    assert s.problems == [{"path": str(tmp_path / "nope"), "stage": "scan", "reason": "dump folder does not exist"}]


def test_unreadable_subfolder_is_recorded_and_scan_goes_on(dump, tmp_path, monkeypatch):
    real_scandir = os.scandir
    blocked = str(dump / "SM-B")

    def scandir(path="."):
        if str(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rows = scan(dump, Store(tmp_path / "s")).rows
    bad = rows[rows["path"] == blocked].iloc[0]
    assert bad["status"] == "unreadable" and "Permission denied" in bad["reason"]
    assert (rows["status"] == "ok").sum() == 2  # the AM01 files still made it


def test_scan_warns_about_usable_files_without_a_start_time(tmp_path, caplog):
    import logging

    from pam.ops.pipeline import scan_stage

    write_wav(tmp_path / "dump" / "A" / "20240501_006000.WAV", noise(1.0, 8000), 8000)  # minute 60
    write_wav(tmp_path / "dump" / "A" / "20240501_010000.WAV", noise(1.0, 8000), 8000)
    with caplog.at_level(logging.WARNING, logger="pam.ops.pipeline"):
        s = scan_stage(tmp_path / "dump", Store(tmp_path / "store"), PamConfig())
    assert s.usable == 2
    assert "1 usable file(s)" in caplog.text and "20240501_006000.WAV" in caplog.text


def test_a_recording_copied_again_under_another_name_is_reported(tmp_path, caplog):
    """The same AudioMoth file copied into a second dump under a new name: its header gives the
    same start, so both would be analysed and counted; the second scan says so."""
    import shutil

    from pam.io.manifest import repeated_recordings
    from pam.ops.pipeline import scan_stage

    comment = audiomoth_comment("04:00:00 01/05/2024")
    write_wav(tmp_path / "d1" / "PINES" / "20240501_040000.WAV", noise(2.0, 8000, seed=1), 8000, comment=comment)
    write_wav(tmp_path / "d1" / "PINES" / "20240501_041000.WAV", noise(2.0, 8000, seed=2), 8000,
              comment=audiomoth_comment("04:10:00 01/05/2024"))
    (tmp_path / "d2" / "PINES").mkdir(parents=True)
    shutil.copy(tmp_path / "d1" / "PINES" / "20240501_040000.WAV", tmp_path / "d2" / "PINES" / "20240502_040000.WAV")
    store = Store(tmp_path / "store")
    conf = PamConfig(scan=ScanConfig(settle_s=0))
    with caplog.at_level("WARNING", logger="pam"):
        scan_stage(tmp_path / "d1", store, conf)
        assert "repeat another file" not in caplog.text  # two different recordings
        scan_stage(tmp_path / "d2", store, conf)
    copy, original = str(tmp_path / "d2" / "PINES" / "20240502_040000.WAV"), str(tmp_path / "d1" / "PINES" /
                                                                                   "20240501_040000.WAV")
    assert f"1 file(s) in {tmp_path / 'd2'} repeat another file's site, recorder, start time and length, e.g. " \
           f"{copy} and {original}" in caplog.text
    manifest = store.read_manifest()
    assert repeated_recordings(manifest[manifest["dump"] == str(tmp_path / "d2")], manifest) == [(copy, original)]
    assert repeated_recordings(manifest[manifest["path"].str.endswith("041000.WAV")], manifest) == []

