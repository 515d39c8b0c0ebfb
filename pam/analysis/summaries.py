"""Biodiversity summaries over the detection store, kept up to date incrementally.

Days and hours are the site's local clock (``sites.<site>.timezone``/``utc_offset`` in the
config; UTC when a site is not configured), because that is how field teams think about
"the morning of the 15th". Tables, all under ``STORE/summaries/<name>/<name>.parquet``:

* ``effort``: recorded and analysed hours per site x local date x local hour (``pam.analysis.effort``);
* ``hourly_counts``: detections per site x local hour x species (the only table that reads
  detections; maintained incrementally);
* ``daily_counts``, ``site_days``, ``site_richness``, ``diel``, ``occupancy``, ``precision``:
  derived from the two above (small) on every run; the per-model ones (``daily_counts``,
  ``diel``, ``occupancy``) take their zeros from each model's own scored audio
  (``pam.analysis.effort.analysed_by_model``), and the occupancy CSVs hold the counting model's
  histories (``label_models``).

Incremental rule: ``summaries/state.json`` lists the flushes (run, commit number) already
folded in, with their done rows. Only the (site, local day) pairs holding detections of new
flushes are recounted; effort is recomputed in full every time (one row per recording,
cheap). Any other change (a filter, a site's clock, a flush's done rows replaced by
``--force``) recomputes everything; compaction, which moves rows but changes none, does not.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import pam.store.schemas as schemas
from pam.config import PamConfig
from pam.analysis.effort import analysed_by_model, day_strings, effort_table, local_clock, surveyed_by_model, utc_micros
from pam.analysis.occupancy import detection_histories, run_thresholds, write_history_csvs
from pam.store.analysis_config import stored_analysis_config
from pam.store.query import score_threshold
from pam.store.results import DETECTION, ResultFile, ResultsTable
from pam.store.store import PART_NAME, UNKNOWN, Store
from pam.analysis.survey_covariates import site_positions, survey_days

STATE_VERSION = 2  # 2: flushes and their done rows instead of done file names
_HOURLY_KEYS = ["site", "local_date", "local_hour", "label", "model_id"]


@dataclass
class SummaryResult:
    """What a summarize run did: the tables, how much it recounted, and notes for the user."""

    tables: dict[str, pd.DataFrame]
    folder: Path
    full: bool
    recounted_days: int
    new_done_files: int
    notes: list[str] = field(default_factory=list)
    # the model whose rows count for each species in totals over models (site tables, report)
    label_models: dict[str, str] = field(default_factory=dict)


def _write(store: Store, name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Write one table with its schema; returns it as readers will see it (typed columns)."""
    table = pa.Table.from_pandas(frame[schemas.TABLES[name][0].names], schema=schemas.with_version(name),
                                 preserve_index=False)
    store.write_summary(name, table)
    return table.to_pandas()


# -- detections -> hourly counts -------------------------------------------------------------
def _partition(path: Path) -> tuple[str, str]:
    """(site, UTC month) of a committed detection file, from its folder names."""
    return unquote(path.parent.parent.name[len("site="):]), path.parent.name[len("month="):]


def _flush_key(path: Path) -> tuple[str, int] | None:
    m = PART_NAME.match(path.name)
    return (m["run"], int(m["seq"])) if m else None


def _filter(min_score: float | None, model_id: str | None) -> ds.Expression | None:
    flt = None
    if min_score is not None:
        flt = ds.field("score") >= score_threshold(min_score)
    if model_id is not None:
        cond = ds.field("model_id") == model_id
        flt = cond if flt is None else flt & cond
    return flt


def _local_rows(store: Store, files: list[Path], site: str, config: PamConfig,
                flt: ds.Expression | None, columns: list[str]) -> pd.DataFrame:
    """Detections of one site's files with their local day and hour (rows without a time dropped)."""
    table = store.detections_dataset(files).to_table(columns=columns, filter=flt)
    frame = table.to_pandas()
    frame = frame[frame["start_time"].notna()]
    utc_us, _valid = utc_micros(frame["start_time"])
    days, hours = local_clock(utc_us, config.site_tz(site))
    return frame.assign(local_day=days, local_hour=hours, minute=utc_us // 60_000_000)


def count_hours(store: Store, files: list[Path], config: PamConfig, min_score: float | None,
                model_id: str | None, days: dict[str, set[int]] | None = None) -> pd.DataFrame:
    """hourly_counts rows from ``files``, kept to ``days`` (site -> local days) when given."""
    by_site: dict[str, list[Path]] = {}
    for f in files:
        by_site.setdefault(_partition(f)[0], []).append(f)
    flt = _filter(min_score, model_id)
    out = []
    for site, site_files in sorted(by_site.items()):
        rows = _local_rows(store, site_files, site, config, flt, ["start_time", "label", "score", "model_id"])
        if days is not None:
            rows = rows[np.isin(rows["local_day"].to_numpy(), np.fromiter(days.get(site, ()), dtype=np.int64))]
        if rows.empty:
            continue
        agg = rows.groupby(["local_day", "local_hour", "label", "model_id"], as_index=False, sort=True).agg(
            detections=("score", "size"), positive_minutes=("minute", "nunique"), max_score=("score", "max"))
        agg.insert(0, "site", site)
        out.append(agg)
    if not out:
        return schemas.HOURLY_COUNTS.empty_table().to_pandas()
    frame = pd.concat(out, ignore_index=True)
    frame.insert(1, "local_date", day_strings(frame.pop("local_day").to_numpy()))
    frame["max_score"] = frame["max_score"].astype(np.float32)
    return frame[schemas.HOURLY_COUNTS.names]


def _touched_days(store: Store, new_files: list[Path], config: PamConfig) -> dict[str, set[int]]:
    """Site -> local days holding any detection of the new flushes (filters not applied)."""
    touched: dict[str, set[int]] = {}
    by_site: dict[str, list[Path]] = {}
    for f in new_files:
        by_site.setdefault(_partition(f)[0], []).append(f)
    for site, files in by_site.items():
        rows = _local_rows(store, files, site, config, None, ["start_time"])
        touched.setdefault(site, set()).update(int(d) for d in np.unique(rows["local_day"].to_numpy()))
    return touched


def _files_near(files: list[Path], touched: dict[str, set[int]], entries: dict[Path, ResultFile]) -> list[Path]:
    """Committed files holding a UTC date within a day of a touched local day at that site
    (each file's first and last date, from the table's log)."""
    near = {site: [(str(np.datetime64(d - 1, "D")), str(np.datetime64(d + 1, "D"))) for d in days]
            for site, days in touched.items()}
    out = []
    for f in files:
        site, _month = _partition(f)
        days = entries[f].days() if f in entries else None
        if site in near and days is not None and any(lo <= days[1] and days[0] <= hi for lo, hi in near[site]):
            out.append(f)
    return out


def _compacted_before_counted(store: Store, new_flushes: set[tuple[str, int]], files: list[Path]) -> bool:
    """Whether a new flush that wrote detections has no detection file of its own left (the
    store's compaction merged it before these summaries counted it)."""
    with_files = {_flush_key(f) for f in files}
    missing = new_flushes - with_files
    if not missing:
        return False
    done = store.done_table(columns=["run_id", "detections"])
    runs = {run for run, _seq in missing}
    return bool(done[done["run_id"].isin(runs)]["detections"].sum() > 0)


# -- state ---------------------------------------------------------------------------------
def _flushes(store: Store, snap) -> dict[str, int]:
    """"<run>/<commit number>" -> done rows of every committed flush (compaction keeps them)."""
    return {f"{run}/{seq}": rows for (run, seq), rows in store.committed_flushes(snap).items()}


def _inputs(config: PamConfig, min_score: float | None, model_id: str | None) -> dict:
    """What the hourly counts depend on besides the detections: a change means recount all."""
    clocks = {s: [c.timezone, c.utc_offset] for s, c in sorted(config.sites.items())}
    return {"min_score": min_score, "model_id": model_id, "clocks": clocks,
            "hourly_counts": schemas.HOURLY_COUNTS_VERSION}


STATE_REL = "summaries/state.json"  # relative to the store's root


def _read_state(store: Store) -> dict | None:
    try:
        state = json.loads(store.location.read_text(STATE_REL))
    except (OSError, ValueError):
        return None
    return state if state.get("version") == STATE_VERSION else None


def _write_state(store: Store, state: dict) -> None:
    store.location.write_text(json.dumps(state, indent=1, sort_keys=True), STATE_REL)


def _write_histories(store: Store, occupancy: pd.DataFrame, counting: dict[str, str], sites: pd.DataFrame,
                     min_score: float | None, thresholds) -> None:
    """The occupancy CSVs under summaries/occupancy (on object storage: written here, then uploaded)."""
    if not store.remote:
        write_history_csvs(occupancy, store.summaries_dir / "occupancy", counting, sites, min_score=min_score,
                           thresholds=thresholds)
        return
    with tempfile.TemporaryDirectory(prefix="pam-occupancy-") as tmp:
        write_history_csvs(occupancy, Path(tmp), counting, sites, min_score=min_score, thresholds=thresholds)
        store.location.upload_folder(Path(tmp), "summaries/occupancy", stale_prefix="detection_history_")


# -- derived tables --------------------------------------------------------------------------
def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """String columns as plain objects: pandas cannot merge two empty Arrow-backed string keys."""
    return frame.astype({c: object for c in frame.columns if pd.api.types.is_string_dtype(frame[c])})


def _joined(values: pd.Series) -> str:
    return ";".join(sorted(set(values)))


def label_models(hourly: pd.DataFrame, runs: pd.DataFrame, done: pd.DataFrame) -> dict[str, str]:
    """For each species, the model whose detections count in totals over models.

    Two models with a class in common (a recalibrated copy, a retrained model) both scored the
    same audio; adding their detections would count each call twice. The model of the most
    recent run wins; models without a run (committed by a script) are ranked by the number of
    recordings they scored.
    """
    # a run of several models names them all, joined with ';' (pam.store.runs)
    dated = runs.dropna(subset=["model_id", "started_at"])
    dated = dated.assign(model_id=dated["model_id"].str.split(";")).explode("model_id")
    latest = dated.groupby("model_id")["started_at"].max()
    scored = done.groupby("model_id")["recording_id"].nunique()
    out: dict[str, str] = {}
    for label, models in hourly.groupby("label")["model_id"]:
        candidates = sorted(set(models))
        dated = [m for m in candidates if m in latest.index]
        out[str(label)] = (max(dated, key=lambda m: latest[m]) if dated
                           else max(candidates, key=lambda m: (scored.get(m, 0), m)))
    return out


def one_model_per_label(frame: pd.DataFrame, models: dict[str, str]) -> pd.DataFrame:
    """Rows of ``frame`` (label, model_id columns) from each species' counting model only."""
    if frame.empty or not models:
        return frame
    keep = [models.get(label, m) == m for label, m in zip(frame["label"], frame["model_id"])]
    return frame[np.asarray(keep, dtype=bool)]


def site_days_table(effort: pd.DataFrame, hourly: pd.DataFrame) -> pd.DataFrame:
    """Effort and richness per site x local day; counts null where the day was not surveyed."""
    eff = effort.groupby(["site", "local_date"], as_index=False)[["recorded_h", "analysed_h"]].sum()
    det = hourly.groupby(["site", "local_date"], as_index=False).agg(
        detections=("detections", "sum"), species=("label", "nunique"), species_list=("label", _joined))
    out = eff.merge(det, on=["site", "local_date"], how="outer").sort_values(["site", "local_date"], ignore_index=True)
    out[["recorded_h", "analysed_h"]] = out[["recorded_h", "analysed_h"]].fillna(0.0)
    surveyed = (out["analysed_h"] > 0) | (out["detections"].fillna(0) > 0)
    out["surveyed"] = surveyed
    for col in ("detections", "species"):
        out[col] = out[col].fillna(0).where(surveyed)  # NaN -> null in the table
    out["species_list"] = out["species_list"].astype(object).where(out["species_list"].notna(), "").where(surveyed, None)
    return out


def daily_counts_table(model_days: pd.DataFrame, hourly: pd.DataFrame) -> pd.DataFrame:
    """Per species x site x local day, with a 0 row for every day its model scored without detecting it.

    ``model_days``: (site, local_date, model_id) of the days each model scored audio.
    """
    counts = hourly.groupby(["site", "local_date", "label", "model_id"], as_index=False).agg(
        detections=("detections", "sum"), positive_minutes=("positive_minutes", "sum"), max_score=("max_score", "max"))
    species = hourly[["label", "model_id"]].drop_duplicates()
    grid = model_days[["site", "local_date", "model_id"]].merge(species, on="model_id")
    out = grid.merge(counts, on=["site", "local_date", "label", "model_id"], how="outer")
    out[["detections", "positive_minutes"]] = out[["detections", "positive_minutes"]].fillna(0)
    out["max_score"] = out["max_score"].astype(np.float32)
    return out.sort_values(["site", "local_date", "label", "model_id"], ignore_index=True)


def site_richness_table(site_days: pd.DataFrame, hourly: pd.DataFrame) -> pd.DataFrame:
    """Per site over the whole deployment."""
    g = site_days.groupby("site")
    out = pd.DataFrame({
        "first_date": g["local_date"].min(), "last_date": g["local_date"].max(),
        "days_recorded": g["recorded_h"].apply(lambda h: int((h > 0).sum())),
        "days_surveyed": g["surveyed"].sum().astype(np.int64),
        "recorded_h": g["recorded_h"].sum(), "analysed_h": g["analysed_h"].sum(),
        "detections": g["detections"].sum().astype(np.int64),
    })
    sp = hourly.groupby("site").agg(species=("label", "nunique"), species_list=("label", _joined))
    out = out.join(sp, how="left").reset_index()
    out["species"] = out["species"].fillna(0)
    out["species_list"] = out["species_list"].astype(object).where(out["species_list"].notna(), "")
    return out


def diel_table(model_hours: pd.DataFrame, hourly: pd.DataFrame) -> pd.DataFrame:
    """Detections per species x site x local hour, beside the hours that row's model scored there.

    ``model_hours``: each model's scored audio (``effort.analysed_by_model``). Every site x
    hour a model scored gets a row for each species that model detected anywhere, 0 where it
    found none; hours it never scored at a site have no row (unless it detected something there).
    """
    det = hourly.groupby(["site", "label", "model_id", "local_hour"], as_index=False)["detections"].sum()
    eff = model_hours[model_hours["analysed_h"] > 0].groupby(["site", "model_id", "local_hour"],
                                                             as_index=False)["analysed_h"].sum()
    species = hourly[["label", "model_id"]].drop_duplicates()
    grid = eff[["site", "model_id", "local_hour"]].merge(species, on="model_id")
    out = grid.merge(det, on=["site", "label", "model_id", "local_hour"], how="outer")
    out = out.merge(eff, on=["site", "model_id", "local_hour"], how="left")
    out["detections"] = out["detections"].fillna(0)
    out["analysed_h"] = out["analysed_h"].fillna(0.0)
    out["detections_per_h"] = (out["detections"] / out["analysed_h"]).where(out["analysed_h"] > 0)
    out["local_hour"] = out["local_hour"].astype(np.int8)
    return out.sort_values(["site", "label", "model_id", "local_hour"], ignore_index=True)


def precision_table(store: Store, min_score: float | None, model_id: str | None) -> pd.DataFrame:
    """Per-species precision from verified labels: true / (true + false); unsure not counted."""
    ver = store.read_verified()
    if min_score is not None:
        ver = ver[ver["score"] >= score_threshold(min_score).as_py()]
    if model_id is not None:
        ver = ver[ver["model_id"] == model_id]
    if ver.empty:
        return schemas.PRECISION.empty_table().to_pandas()
    ver = ver.assign(model_id=ver["model_id"].astype(object).where(ver["model_id"].notna(), ""))
    out = ver.groupby(["label", "model_id"], as_index=False).agg(
        verified_true=("verdict", lambda v: int((v == "true").sum())),
        verified_false=("verdict", lambda v: int((v == "false").sum())),
        unsure=("verdict", lambda v: int((v == "unsure").sum())))
    judged = out["verified_true"] + out["verified_false"]
    out["precision"] = (out["verified_true"] / judged).where(judged > 0)
    out["model_id"] = out["model_id"].where(out["model_id"] != "", None)
    return out


# -- the run ---------------------------------------------------------------------------------
def summarize(store: Store, config: PamConfig | None = None, *, min_score: float | None = None,
              model_id: str | None = None, period_days: int | None = None, full: bool = False) -> SummaryResult:
    """Bring every summary table up to date; recount only the days new detections touched.

    Arguments left ``None`` come from the config's ``summaries`` section. Without ``config``,
    the sites and summaries settings of the store's last scan (``pam.store.analysis_config``).
    """
    config = config or stored_analysis_config(store) or PamConfig()
    min_score = config.summaries.min_score if min_score is None else min_score
    model_id = config.summaries.model if model_id is None else model_id
    period_days = config.summaries.period_days if period_days is None else period_days
    if period_days < 1:
        raise ValueError(f"period_days must be at least 1, got {period_days}")
    notes: list[str] = []
    snap = store.snapshot()
    done_now = _flushes(store, snap)
    inputs = _inputs(config, min_score, model_id)
    state = None if full else _read_state(store)
    old_flushes = state["flushes"] if state else {}
    changed = [n for n, rows in old_flushes.items() if done_now.get(n) != rows]
    full = (state is None or state.get("inputs") != inputs or bool(changed)
            or not store.has_summary("hourly_counts"))
    new_flushes = {(n.rsplit("/", 1)[0], int(n.rsplit("/", 1)[1])) for n in done_now if n not in old_flushes}
    files = store.detection_files(snap=snap)
    entries = {store.results_dir / f.path: f for f in ResultsTable.files(snap, DETECTION)}
    if not full and _compacted_before_counted(store, new_flushes, files):
        full = True  # a new flush's detection files were compacted away: its days cannot be found by file name
    if full:
        hourly = count_hours(store, [f for f in files if _partition(f)[1] != UNKNOWN], config, min_score, model_id)
        recounted = int(hourly[["site", "local_date"]].drop_duplicates().shape[0])
    else:
        touched = _touched_days(store, [f for f in files if _flush_key(f) in new_flushes], config)
        fresh = count_hours(store, _files_near(files, touched, entries), config, min_score, model_id, touched)
        old = store.read_summary("hourly_counts")
        old_days = old["local_date"].map(lambda d: int(np.datetime64(d, "D").astype(np.int64))) if len(old) else []
        stale = np.array([day in touched.get(site, ()) for site, day in zip(old["site"], old_days)], dtype=bool)
        hourly = pd.concat([old[~stale], fresh], ignore_index=True).sort_values(_HOURLY_KEYS, ignore_index=True)
        recounted = sum(len(d) for d in touched.values())
    undated = [f for f in files if _partition(f)[1] == UNKNOWN]
    if undated:
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in undated)
        notes.append(f"{rows} detection(s) from recordings without a start time are left out of the summaries")
    done = store.done_table(model_id=model_id)
    if model_id is None and done["model_id"].nunique() > 1:
        ids = sorted(done["model_id"].unique())
        named = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        notes.append(f"the store holds results of {len(ids)} models or heads ({named}); a recording scored by any "
                     "of them counts as surveyed (`pam summarize --model ID` counts one's alone)")
    manifest = store.read_manifest()
    effort, effort_notes = effort_table(manifest, done, config)
    effort, hourly = _plain(effort), _plain(hourly)
    notes += effort_notes
    runs = store.read_runs()
    counting = label_models(hourly, runs, done)
    shared = hourly.groupby("label")["model_id"].nunique()
    several = shared[shared > 1].index
    if len(several) > 3:  # a broad model's hundreds of species: one line, not one per species
        notes.append(f"{len(several)} species have detections of several models; site totals and the report count "
                     f"each species' latest run's model ({', '.join(sorted({counting[s] for s in several}))}), the "
                     "per-model tables keep each; `pam summarize --model ID` chooses one")
    for label in several if len(several) <= 3 else []:
        notes.append(f"{label} has detections of {shared[label]} models; site totals and the report count "
                     f"model {counting[label]} (the latest run's), the per-model tables keep each; "
                     "`pam summarize --model ID` chooses one")
    once = one_model_per_label(hourly, counting)
    site_days = site_days_table(effort, once)
    model_hours = _plain(analysed_by_model(done, manifest, config))
    tables = {
        "effort": effort, "hourly_counts": hourly, "site_days": site_days,
        "daily_counts": daily_counts_table(surveyed_by_model(model_hours), hourly),
        "site_richness": site_richness_table(site_days, once),
        "diel": diel_table(model_hours, hourly),
    }
    tables["occupancy"] = detection_histories(site_days, tables["daily_counts"], survey_days(model_hours, config),
                                              period_days)
    tables["precision"] = precision_table(store, min_score, model_id)
    tables = {name: _write(store, name, frame) for name, frame in tables.items()}
    # the histories of the model the report counts (label_models); the table keeps every model's
    _write_histories(store, tables["occupancy"], counting, site_positions(config, sorted(site_days["site"].unique())),
                     min_score, run_thresholds(runs))
    # the done files listed before reading: a flush committed meanwhile is recounted next time
    _write_state(store, {"version": STATE_VERSION, "inputs": inputs, "period_days": period_days,
                         "flushes": done_now})
    return SummaryResult(tables, store.summaries_dir, full, recounted, len(new_flushes), notes, counting)

