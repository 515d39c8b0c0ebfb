"""The analysis commands end to end through the CLI, on a small store with real audio files."""

import io

import pandas as pd
import pytest
from typer.testing import CliRunner

from pamstore import Rec, build
from pam.cli.main import app
from synth import noise, write_wav

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    wav = write_wav(root / "dump" / "A" / "20240501_050000.WAV", noise(30.0, 8000, 0.2), 8000)
    recs = [
        Rec("ra", "A", "2024-05-01T05:00", 30.0, path=str(wav),
            detections=[(1.5, "owl", 0.9, "m1"), (3.0, "owl", 0.5, "m1"), (12.0, "wren", 0.7, "m1"),
                        (21.0, "owl", 0.6, "m1")]),
        Rec("rb", "B", "2024-05-03T23:59", 3600.0, detections=[(30.0, "owl", 0.8, "m1")]),
    ]
    return build(root / "store", recs)


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return res


def test_summarize_and_sql(store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sites:\n  B:\n    utc_offset: '+02:00'\nsummaries:\n  period_days: 2\n")
    res = invoke("summarize", store.root, "--config", cfg, "--min-score", "0.65")
    assert res.exit_code == 0, res.output
    assert "summaries written to" in res.output and "full recount" in res.output
    res = invoke("sql", store.root, "SELECT site, local_date, detections FROM site_days ORDER BY site, local_date")
    assert res.exit_code == 0, res.output
    assert "2024-05-04" in res.output  # B's 23:59:30 UTC detection is on the 4th at +02:00
    piped = pd.read_csv(io.StringIO(res.output))  # not a terminal here: plain CSV, every row
    assert list(piped.columns) == ["site", "local_date", "detections"] and "2024-05-04" in set(piped["local_date"])
    out = tmp_path / "occ.csv"
    res = invoke("sql", store.root, "SELECT * FROM occupancy WHERE label = 'owl'", "--out", out)
    assert res.exit_code == 0 and set(pd.read_csv(out)["period"]) == {1, 2}


def test_query_to_terminal_and_files(store, tmp_path):
    res = invoke("query", store.root, "--species", "owl", "--site", "A", "--start", "2024-05-01", "--end", "2024-05-01")
    assert res.exit_code == 0, res.output
    assert "3 detections match (1 files read)" in res.output
    assert "05:00:01.5" in res.output and "05:00:03.0" in res.output  # the half second is shown
    out = tmp_path / "q.parquet"
    res = invoke("query", store.root, "--min-score", "0.75", "--out", out)
    assert res.exit_code == 0 and sorted(pd.read_parquet(out)["score"].astype(float).round(2)) == [0.8, 0.9]
    res = invoke("query", store.root, "--species", "dodo")  # an unknown species: one line, the known ones
    assert res.exit_code != 0 and "unknown species 'dodo'" in res.output and "Traceback" not in res.output
    res = invoke("query", store.root, "--species", "OWL", "--species", "wren", "--site", "A")  # any case, several
    assert res.exit_code == 0 and "detections match" in res.output


def test_query_events(store, tmp_path):
    res = invoke("query", store.root, "--species", "owl", "--site", "A", "--events")
    assert res.exit_code == 0, res.output
    assert "2 events (3 detection windows) match (1 files read)" in res.output
    assert "05:00:01.5" in res.output and "1.5-6.0" in res.output  # windows 1.5-4.5 and 3-6: one call
    out = tmp_path / "ev.csv"
    res = invoke("query", store.root, "--site", "A", "--events", "--min-score", "0.75", "--out", out)
    assert res.exit_code == 0 and "1 event written" in res.output
    ev = pd.read_csv(out)
    assert ev[["start_s", "end_s", "n_windows"]].values.tolist() == [[1.5, 6.0, 2]]
    assert pd.to_datetime(ev["start_time"]).tolist() == [pd.Timestamp("2024-05-01T05:00:01.5", tz="UTC")]
    assert ev["start_time"].tolist() == ["2024-05-01T05:00:01.500+00:00"]  # the CSV time format of every export


def test_bad_input_is_one_line(store, tmp_path):
    res = invoke("query", store.root, "--start", "yesterday")
    assert res.exit_code == 2 and "--start 'yesterday' is not a date" in res.output
    res = invoke("query", tmp_path / "nowhere")
    assert res.exit_code == 2 and "does not exist" in res.output
    res = invoke("sql", store.root, "SELEKT 1")
    assert res.exit_code == 2 and "SQL error" in res.output
    res = invoke("sql", store.root, "SELECT * FROM site_day")
    assert res.exit_code == 2 and "no table site_day (did you mean site_days?)" in res.output
    assert "the store's tables: " in res.output and "recordings" in res.output


def test_export_review_and_import(store, tmp_path):
    res = invoke("export", store.root, "--format", "raven", "--out", tmp_path / "raven", "--site", "A")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "raven" / "A" / "20240501_050000.Table.1.selections.txt").exists()
    assert "3 events (overlapping windows of a call joined) in 1 file(s)" in res.output
    res = invoke("export", store.root, "--format", "raven", "--out", tmp_path / "raven", "--site", "A", "--windows")
    assert res.exit_code == 0 and "4 detection windows in 1 file(s)" in res.output
    res = invoke("export", store.root, "--format", "csv", "--out", tmp_path / "csv", "--site", "A", "--events")
    assert res.exit_code == 0 and len(pd.read_csv(tmp_path / "csv" / "events.csv")) == 3
    res = invoke("review", store.root, "--species", "owl", "--n", "5", "--out", tmp_path / "rev", "--site", "A")
    assert res.exit_code == 0 and "2 clips" in res.output
    table = pd.read_csv(tmp_path / "rev" / "review.csv", dtype=str, keep_default_na=False)
    table["verdict"] = ["true", "false"]
    table.to_csv(tmp_path / "rev" / "review.csv", index=False)
    res = invoke("review-import", store.root, tmp_path / "rev" / "review.csv", "--labels-out", tmp_path / "l.csv")
    assert res.exit_code == 0, res.output
    assert "2 verdicts imported" in res.output
    assert sorted(pd.read_csv(tmp_path / "l.csv")["label"]) == ["none", "owl"]


def test_report_command(store, tmp_path):
    res = invoke("report", store.root, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.html").exists()
