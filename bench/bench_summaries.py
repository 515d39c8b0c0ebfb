"""Summaries, report and species queries with a broad model's hundreds of species, against 8 species.

Two synthetic seasons with the same sites, days and detections per site-day (bench/season_store.py),
one with 8 species and one with ``--species`` (BirdNET-style labels): for each, a full recount
of every summary table (``summarize(full=True)``: effort, hourly and daily counts, site-days,
richness, diel, occupancy and its CSVs), the incremental recount after one more night, the
HTML report from those summaries, and a one-site, one-week query of one species asked by its
label and by its common name. Medians of ``--repeat`` runs, interleaved.

    python bench/bench_summaries.py [--sites 30] [--days 60] [--per-day 500] [--species 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import season_store  # noqa: E402
from pam.analysis.report import build_report  # noqa: E402
from pam.analysis.summaries import summarize  # noqa: E402
from pam.config import PamConfig  # noqa: E402
from pam.store.query import query_detections  # noqa: E402
from pam.store.species import common_name  # noqa: E402


def one_season(root: Path, n_species: int, args) -> dict:
    """Build a store, then time its summaries, report and queries; returns seconds per step."""
    store = season_store.build(root, args.sites, args.days, args.per_day, seed=args.seed, manifest=False,
                               gaps=False, n_species=n_species)
    sites = season_store.site_names(args.sites)
    plan = season_store.site_plan(args.sites, args.days + 1, args.seed, False,
                                  season_store.broad_species(n_species, args.seed))
    season_store.write_manifest(store, sites, args.days + 1, plan)  # the last night is scanned, not scored yet
    config = PamConfig.model_validate({"sites": {s: {"timezone": "America/Chicago"} for s in sites}})
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    res = summarize(store, config, full=True)
    out["summaries, full recount"] = time.perf_counter() - t0
    season_store.write_day((str(store.root), args.days, sites, args.per_day, plan, args.seed))  # one more night
    t0 = time.perf_counter()
    res = summarize(store, config)
    out["summaries, one more night"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_report(store, root / "report", config, summary=res)
    out["report (figures and tables)"] = time.perf_counter() - t0
    week = dict(sites=sites[2], start="2024-04-08", end="2024-04-14")
    daily = res.tables["daily_counts"]
    there = daily[(daily["site"] == sites[2]) & daily["local_date"].between(week["start"], week["end"])]
    counts = there.groupby("label")["detections"].sum().sort_values()
    label = counts[counts > 0].index[len(counts[counts > 0]) // 2]  # a species of middling abundance there
    t0 = time.perf_counter()
    by_label = query_detections(store, species=label, **week)
    out["query one site-week, by label"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_name = query_detections(store, species=common_name(label).upper(), **week)
    out["query one site-week, by common name"] = time.perf_counter() - t0
    assert by_label.rows.equals(by_name.rows), "a species asked by its common name gave other rows"
    out["_species"] = float(res.tables["hourly_counts"]["label"].nunique())
    out["_rows"] = float(res.tables["hourly_counts"]["detections"].sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=30)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--per-day", type=int, default=500)
    ap.add_argument("--species", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    runs: dict[int, list[dict]] = {8: [], args.species: []}
    with tempfile.TemporaryDirectory(prefix="pam-bench-summaries-") as tmp:
        for i in range(args.repeat):
            for n in runs:
                root = Path(tmp) / f"s{n}-{i}"
                runs[n].append(one_season(root, n, args))
                shutil.rmtree(root)
    few, many = runs[8], runs[args.species]
    print(f"{args.sites} sites x {args.days} days (+1 night), {args.per_day} detections per site-day "
          f"({int(many[0]['_rows']):,} detections); species found: {int(few[0]['_species'])} and "
          f"{int(many[0]['_species'])}; medians of {args.repeat}")
    print(f"{'step':<38} {'8 species':>10} {f'{args.species} species':>12} {'ratio':>6}")
    for step in (k for k in few[0] if not k.startswith("_")):
        a = statistics.median(r[step] for r in few)
        b = statistics.median(r[step] for r in many)
        print(f"{step:<38} {a:>9.2f}s {b:>11.2f}s {b / a:>6.2f}")


if __name__ == "__main__":
    main()
