"""A full scan of a season, the same reader on two store layouts: what the layout alone costs.

``bench/bench_query.py`` times each pam tree's own ``full_scan`` (code and layout together).
This script takes the committed detection files from a store through the given tree's
``Store.detection_files()`` (so a folder-layout store of an older checkout works too, with
``--code``) and reads every row of every file with one fixed reader: pyarrow.dataset, the
twelve detection columns both layouts share, strings as dictionaries, no filter pushed into
the scan. Then it counts one species' rows in one week with Arrow compute, to use the data.

    python bench/bench_full_scan.py --store /tmp/q/new2 --repeat 2
    python bench/bench_full_scan.py --store /tmp/q/oldstore --code /tmp/q/old --repeat 2

Run the two alternately (A B A B): only ratios within one sitting mean anything here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

COLUMNS = ["recording_id", "path", "device", "start_sample", "start_s", "end_s", "start_time", "label", "score",
           "model_id", "settings_hash", "run_id"]
STRINGS = ["recording_id", "path", "device", "label", "model_id", "settings_hash", "run_id"]


def code_tree() -> str:
    for i, a in enumerate(sys.argv):
        if a == "--code" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return str(Path(__file__).resolve().parents[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--code", help="the pam tree whose Store lists the committed files (default: this one)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, code_tree())
    from pam.store.store import Store

    t0 = time.perf_counter()
    files = [str(p) for p in Store(args.store).detection_files()]
    list_s = time.perf_counter() - t0
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=STRINGS))
    week = (datetime(2024, 5, 6, tzinfo=timezone.utc), datetime(2024, 5, 13, tzinfo=timezone.utc))
    times, rows, matching = [], 0, 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        table = ds.dataset(files, format=fmt).to_table(columns=COLUMNS)
        ts = table.column("start_time")
        mask = pc.and_(pc.is_in(table.column("label"), value_set=pa.array(["northern_bobwhite"])),
                       pc.and_(pc.greater_equal(ts, pa.scalar(week[0], ts.type)), pc.less(ts, pa.scalar(week[1], ts.type))))
        matching = pc.sum(mask).as_py()
        times.append(time.perf_counter() - t0)
        rows = table.num_rows
        del table
    print(json.dumps({"store": str(args.store), "code": code_tree(), "files": len(files), "rows": rows,
                      "matching_rows": matching, "list_files_s": round(list_s, 3),
                      "scan_s": [round(t, 2) for t in times], "best_scan_s": round(min(times), 2)}))


if __name__ == "__main__":
    main()
