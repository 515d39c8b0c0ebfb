"""`pam query` on a season: pruned read against a full scan of the same store, in one run.

Builds (or reuses) the synthetic season store of bench/season_store.py, without recording
gaps: 100 sites x 120 days x 1,000 detections a day = 12 million rows in 12,000 part files.
Then times, for one species at one site over one week:

  pruned - pam.store.query.query_detections, the code path of `pam query`, opening the table
           included: files chosen from the table's log (site, UTC month, each file's first and
           last date), then a pyarrow filter;
  open   - opening the table (the latest snapshot) and listing its live files, alone;
  full   - pam.store.query.full_scan: every row of every committed file read (strings as
           dictionaries), the same filter applied afterwards to the Arrow table;

checks both return the same rows, and prints both times and their ratio. With --compact it
then compacts the store (pam store compact) and times the pruned query, the open and the
full scan again, with the live file counts before and after. With --cli it also
times the `pam query` command as a user runs it (including Python start-up and imports).

    python bench/bench_query.py [--store DIR] [--keep] [--repeat 5] [--cli]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import season_store  # noqa: E402

from pam.store.query import full_scan, query_detections  # noqa: E402
from pam.store.results import ResultsTable  # noqa: E402
from pam.store.store import Store  # noqa: E402

QUESTION = {"species": "northern_bobwhite", "sites": "S042", "start": "2024-05-06", "end": "2024-05-12"}


def timed(fn, repeat: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, help="reuse/build the season store here (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temp store")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--per-day", type=int, default=1000)
    ap.add_argument("--cli", action="store_true", help="also time the `pam query` command end to end")
    ap.add_argument("--compact", action="store_true", help="then compact the store and time both reads again")
    args = ap.parse_args()

    root = args.store or Path(tempfile.mkdtemp(prefix="pam-bench-query-")) / "store"
    store = Store(root)
    t0 = time.perf_counter()
    if not (store.results_dir / "_delta_log").is_dir():
        season_store.build(root, args.sites, args.days, args.per_day, gaps=False)
        print(f"built {root} in {time.perf_counter() - t0:.1f} s")
    files = store.detection_files()

    def opened():
        snap = Store(root).snapshot()
        return ResultsTable.files(snap, "detection"), ResultsTable.files(snap, "done")

    try:
        open_times, (det_files, done_files) = timed(opened, args.repeat)
        pruned_times, pruned = timed(lambda: query_detections(store, **QUESTION), args.repeat)
        full_times, full = timed(lambda: full_scan(store, **QUESTION), max(1, min(2, args.repeat)))
        cols = ["recording_id", "start_sample", "label", "model_id"]
        same = pruned.rows[cols].reset_index(drop=True).equals(full[cols].reset_index(drop=True))
        total_rows = store.detections_dataset().count_rows()
        compacted_scan = None
        if args.compact:
            t1 = time.perf_counter()
            store.compact()
            result_compact_s = time.perf_counter() - t1
            compacted_times, _ = timed(lambda: full_scan(store, **QUESTION), max(1, min(2, args.repeat)))
            after_times, after = timed(lambda: query_detections(store, **QUESTION), args.repeat)
            open_after, (det_after, done_after) = timed(opened, args.repeat)
            compacted_scan = {"compact_s": round(result_compact_s, 2), "files_after": len(store.detection_files()),
                              "detection_files_after": len(det_after), "done_files_after": len(done_after),
                              "open_median_after_compaction_s": round(statistics.median(open_after), 4),
                              "pruned_files_read_after_compaction": len(after.files),
                              "same_rows_after_compaction": bool(after.rows[cols].reset_index(drop=True).equals(
                                  pruned.rows[cols].reset_index(drop=True))),
                              "full_scan_after_compaction_s": round(min(compacted_times), 3),
                              "pruned_median_after_compaction_s": round(statistics.median(after_times), 4)}
        result = {
            "store_rows": total_rows, "store_files": len(files), "matching_rows": len(pruned.rows),
            "detection_files": len(det_files), "done_files": len(done_files),
            "open_median_s": round(statistics.median(open_times), 4),
            "pruned_files_read": len(pruned.files), "same_rows": bool(same),
            "pruned_first_s": round(pruned_times[0], 4), "pruned_median_s": round(statistics.median(pruned_times), 4),
            "full_scan_s": round(min(full_times), 3),
            "ratio_full_over_pruned": round(min(full_times) / statistics.median(pruned_times), 1),
        }
        if compacted_scan:
            result.update(compacted_scan)
        if args.cli:
            cmd = [str(Path(sys.executable).with_name("pam")), "query", str(root), "--species", QUESTION["species"],
                   "--site", QUESTION["sites"], "--start", QUESTION["start"], "--end", QUESTION["end"],
                   "--out", str(Path(tempfile.mkdtemp()) / "q.csv")]
            t1 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            result["cli_wall_s"] = round(time.perf_counter() - t1, 2)
        print(json.dumps(result, indent=1))
        print(f"pruned query: {result['pruned_median_s'] * 1000:.0f} ms (median of {args.repeat}; first "
              f"{result['pruned_first_s'] * 1000:.0f} ms), {result['pruned_files_read']} of {len(files)} files; "
              f"full scan: {result['full_scan_s']:.2f} s; full / pruned = {result['ratio_full_over_pruned']}x; "
              f"same rows: {same}")
    finally:
        if args.store is None and not args.keep:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
