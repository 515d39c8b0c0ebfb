"""Write a synthetic season of detections straight into a store, fast (no audio, no model).

Sites record one-hour files around the clock, with a battery gap or two; eight species have
their own diel rhythm (dawn chorus, dusk, night owls) and are present at a random subset of
sites. Every site-day holds exactly ``--per-day`` detections. Files are written fast in the
folder layout of pam before the results table (``OUT.folder/detections/site=S/date=D/part-<run>-<seq>.parquet``
with one ``done/done-<run>-<seq>.parquet`` per day, one run per night: today's store on main),
then converted with ``pam.store.migrate`` into OUT, the results-table store (one file per
site-day, as the folder had). ``--manifest`` also writes the recordings (effort, the report).

    python bench/season_store.py OUT [--sites 100] [--days 120] [--per-day 1000] [--manifest]
                                     [--pending-days N] [--config OUT.yaml] [--review] [--species N]

``--species N`` (more than 8) adds made-up species labelled as BirdNET labels them
(``Avis exemplaris012_Example Bird 012``), each rarer than the one before, as a broad model
would find them.

The default is the benchmark store of docs/benchmarks.md (12 million rows).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from urllib.parse import quote  # noqa: E402

import pam.store.schemas as schemas  # noqa: E402
from pam.store.migrate import migrate  # noqa: E402
from pam.store.store import Store  # noqa: E402


def partition_dir(site: str, day: str) -> str:
    """The folder layout's partition folder (pam before the results table)."""
    return f"site={quote(site, safe='')}/date={day}"

START = datetime(2024, 4, 1, tzinfo=timezone.utc)
RATE = 48000
MODEL = "0123456789abcdef"
SETTINGS = "5e77a1c0ffee"
OFFSET_H = -5  # sites keep Central Daylight Time (config: America/Chicago)
# species: (name, local hours of peak activity, spread in hours, share of a site's detections)
SPECIES = [
    ("northern_bobwhite", 6.5, 1.2, 3.0), ("eastern_meadowlark", 8.0, 2.0, 2.0),
    ("carolina_wren", 9.0, 3.0, 2.0), ("chuck-wills-widow", 21.5, 1.5, 1.5),
    ("barred_owl", 2.0, 2.5, 1.0), ("great_horned_owl", 23.0, 2.0, 0.6),
    ("american_bullfrog", 0.5, 3.0, 1.2), ("eastern_whip-poor-will", 4.5, 1.0, 0.8),
]


def site_names(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(1, n + 1)]


def broad_species(n: int, seed: int = 0) -> list[tuple[str, float, float, float]]:
    """The eight species above and ``n - 8`` made-up ones in BirdNET's ``Scientific_Common`` form,
    with random peak hours and shares falling off as 1 / rank."""
    rng = np.random.default_rng(seed)
    extra = [(f"Avis exemplaris{i:03d}_Example Bird {i:03d}", float(rng.uniform(0, 24)), float(rng.uniform(1, 3)),
              3.0 / (1 + i)) for i in range(max(0, n - len(SPECIES)))]
    return (SPECIES + extra)[:n]


def site_names(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(1, n + 1)]


def site_plan(n_sites: int, n_days: int, seed: int, gaps: bool = True, species: list | None = None) -> dict:
    """Which species each site has and which days each site recorded (gaps included)."""
    species = species or SPECIES
    rng = np.random.default_rng(seed)
    present = rng.random((n_sites, len(species))) < np.linspace(0.9, 0.35, len(species))
    present[:, 0] |= ~present.any(axis=1)
    daily_p = rng.uniform(0.25, 1.0, present.shape)  # chance that a present species calls on a given day
    recording = np.ones((n_sites, n_days), dtype=bool)
    for s in range(n_sites if gaps else 0):
        if rng.random() < 0.5:  # a battery died: a gap of 2-9 days
            g = rng.integers(5, max(6, n_days - 10))
            recording[s, g:g + rng.integers(2, 10)] = False
        if rng.random() < 0.15:  # deployed late
            recording[s, : rng.integers(1, max(2, n_days // 6))] = False
    return {"present": present, "daily_p": daily_p, "recording": recording, "species": species}


def diel_weights(species: int, table: list | None = None) -> np.ndarray:
    _n, peak, spread, _share = (table or SPECIES)[species]
    local = (np.arange(24) + OFFSET_H) % 24  # local hour of each UTC hour
    dist = np.minimum(np.abs(local - peak), 24 - np.abs(local - peak))
    return np.exp(-0.5 * (dist / spread) ** 2) + 0.01


def day_rows(site_index: int, site: str, day: int, per_day: int, plan: dict, run: str, seed: int) -> pa.Table:
    rng = np.random.default_rng([seed, site_index, day])
    present = np.flatnonzero(plan["present"][site_index])
    calling = present[rng.random(len(present)) < plan["daily_p"][site_index, present]]
    present = calling if len(calling) else present[:1]
    table = plan.get("species", SPECIES)
    shares = np.array([table[k][3] for k in present]) * rng.uniform(0.5, 1.5, len(present))
    species = rng.choice(present, size=per_day, p=shares / shares.sum())
    hours = np.empty(per_day, dtype=np.int64)
    for k in np.unique(species):
        idx = np.flatnonzero(species == k)
        w = diel_weights(k, table)
        hours[idx] = rng.choice(24, size=len(idx), p=w / w.sum())
    windows = rng.integers(0, 2399, size=per_day)  # 1.5 s hop within the hour
    order = np.lexsort((windows, hours))
    species, hours, windows = species[order], hours[order], windows[order]
    start_s = windows * 1.5
    day0 = START + timedelta(days=day)
    base_us = int(day0.timestamp() * 1e6)
    start_us = base_us + hours * 3_600_000_000 + (start_s * 1e6).astype(np.int64)
    rec = np.array([f"{site}-{day0:%Y%m%d}-{h:02d}" for h in range(24)], dtype=object)
    path = np.array([f"/data/season/{site}/{day0:%Y%m%d}_{h:02d}0000.WAV" for h in range(24)], dtype=object)
    names = np.array([s[0] for s in table], dtype=object)
    scores = (0.5 + 0.5 * rng.beta(2.0, 3.0, size=per_day)).astype(np.float32)
    return pa.table({
        "recording_id": pa.array(rec[hours], pa.string()), "path": pa.array(path[hours], pa.string()),
        "device": pa.nulls(per_day, pa.string()), "start_sample": pa.array((start_s * RATE).astype(np.int64)),
        "start_s": pa.array(start_s), "end_s": pa.array(start_s + 3.0),
        "start_time": pa.array(start_us.astype("datetime64[us]"), schemas.UTC_TS),
        "label": pa.array(names[species], pa.string()), "score": pa.array(scores),
        "model_id": pa.array([MODEL] * per_day, pa.string()), "settings_hash": pa.array([SETTINGS] * per_day, pa.string()),
        "run_id": pa.array([run] * per_day, pa.string()),
    }, schema=schemas.with_version("detections"))


def write_day(args: tuple) -> int:
    root, day, sites, per_day, plan, seed = args
    root = Path(root)
    day0 = START + timedelta(days=day)
    run = f"{day0 + timedelta(days=1):%Y%m%d}T020000Z-{day:06x}"
    done = []
    for i, site in enumerate(sites):
        if not plan["recording"][i, day]:
            continue
        table = day_rows(i, site, day, per_day, plan, run, seed)
        folder = root / "detections" / partition_dir(site, f"{day0:%Y-%m-%d}")
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"part-{run}-00000.parquet", compression="zstd")
        counts = pd.Series(table.column("recording_id").to_numpy(zero_copy_only=False)).value_counts()
        for h in range(24):
            rid = f"{site}-{day0:%Y%m%d}-{h:02d}"
            done.append({"recording_id": rid, "model_id": MODEL, "settings_hash": SETTINGS, "run_id": run,
                         "site": site, "path": f"/data/season/{site}/{day0:%Y%m%d}_{h:02d}0000.WAV",
                         "windows": 2399, "audio_s": 3600.0, "detections": int(counts.get(rid, 0)),
                         "committed_at": day0 + timedelta(days=1, hours=2)})
    if done:
        (root / "done").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(done, schema=schemas.with_version("done")),
                       root / "done" / f"done-{run}-00000.parquet")
    return len(done)


def write_manifest(store: Store, sites: list[str], n_days: int, plan: dict, pending_days: int = 0) -> None:
    """The recordings, plus ``pending_days`` more days scanned but not yet scored."""
    rows = {k: [] for k in ("recording_id", "path", "site", "start_time")}
    recorded = np.concatenate([plan["recording"], np.ones((len(sites), pending_days), dtype=bool)], axis=1)
    for i, site in enumerate(sites):
        for day in np.flatnonzero(recorded[i]):
            day0 = START + timedelta(days=int(day))
            for h in range(24):
                rows["recording_id"].append(f"{site}-{day0:%Y%m%d}-{h:02d}")
                rows["path"].append(f"/data/season/{site}/{day0:%Y%m%d}_{h:02d}0000.WAV")
                rows["site"].append(site)
                rows["start_time"].append(day0 + timedelta(hours=h))
    n = len(rows["path"])
    frame = pd.DataFrame({
        **rows, "dump": "/data/season", "size": 345_600_044, "mtime": START, "device": None, "recorder": "audiomoth",
        "time_source": "filename", "sample_rate": RATE, "channels": 1, "frames": 3600 * RATE, "duration_s": 3600.0,
        "format": "WAV", "status": "ok", "reason": None, "scanned_at": START,
    })
    assert len(frame) == n
    store.write_manifest(frame)


def write_config(path: Path, sites: list[str]) -> None:
    lines = ["sites:"] + [f"  {s}:\n    timezone: America/Chicago" for s in sites]
    path.write_text("\n".join(lines) + "\n")


def simulate_review(store: Store, out: Path, seed: int) -> None:
    """A pretend reviewer: 40 top detections per species judged, mostly true at high scores."""
    from pam.analysis.review import import_review
    from pam.store.query import query_detections

    rng = np.random.default_rng(seed)
    det = query_detections(store, columns=["path", "start_s", "end_s", "label", "score", "site", "model_id", "recording_id"]).rows
    rows = det.sort_values("score", ascending=False).groupby("label").head(40)
    verdict = np.where(rng.random(len(rows)) < rows["score"].to_numpy() - 0.05, "true", "false")
    review = pd.DataFrame({"clip": "", "recording": rows["path"], "start_s": rows["start_s"], "end_s": rows["end_s"],
                           "species": rows["label"], "score": rows["score"], "verdict": verdict, "notes": "",
                           "site": rows["site"], "model_id": rows["model_id"], "recording_id": rows["recording_id"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    review.to_csv(out, index=False)
    import_review(store, out)


def build(root: Path, n_sites: int, n_days: int, per_day: int, seed: int = 0, manifest: bool = False,
          pending_days: int = 0, gaps: bool = True, workers: int | None = None, n_species: int = 8) -> Store:
    """The season as a results-table store at ``root``; the folder-layout store it was converted
    from stays beside it as ``root.folder`` (today's store on main, for comparisons)."""
    root = Path(root)
    folder = root.with_name(root.name + ".folder")
    folder.mkdir(parents=True, exist_ok=True)
    sites = site_names(n_sites)
    plan = site_plan(n_sites, n_days, seed, gaps, broad_species(n_species, seed))
    jobs = [(str(folder), day, sites, per_day, plan, seed) for day in range(n_days)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        list(pool.map(write_day, jobs, chunksize=4))
    if manifest:
        (folder / "manifest").mkdir(exist_ok=True)
        write_manifest(_FolderManifest(folder), sites, n_days, plan, pending_days)
    migrate(folder, root)
    return Store(root)


class _FolderManifest:
    """Writes the manifest into a folder-layout store (same file as in the new layout)."""

    def __init__(self, root: Path):
        self.root = root

    def write_manifest(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=schemas.with_version("manifest"), preserve_index=False)
        pq.write_table(table, self.root / "manifest" / "manifest.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--per-day", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--manifest", action="store_true", help="also write the recordings (effort)")
    ap.add_argument("--pending-days", type=int, default=0, help="with --manifest: days recorded but not scored yet")
    ap.add_argument("--no-gaps", action="store_true", help="every site records every day (the benchmark store)")
    ap.add_argument("--config", type=Path, help="write a config with the sites' time zone here")
    ap.add_argument("--review", action="store_true", help="also import simulated review verdicts")
    ap.add_argument("--species", type=int, default=8, help="species (more than 8: made-up BirdNET-style labels)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    store = build(args.out, args.sites, args.days, args.per_day, args.seed, args.manifest, args.pending_days,
                  gaps=not args.no_gaps, n_species=args.species)
    if args.config:
        write_config(args.config, site_names(args.sites))
    if args.review:
        simulate_review(store, args.out / "review" / "simulated-review.csv", args.seed)
    print(f"wrote {len(store.detection_files())} part files to {store.root} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
