"""Detection histories for occupancy models: site x survey period, per species and model.

A cell is 1 when the model detected the species at the site in the period, 0 when that model
scored audio there in the period without detecting it, and missing (NA) when it scored
nothing there. Each model keeps its own history: two models of one species (a recalibrated
copy, a retrained model) scored the same audio, and pooling them would turn one model's 0
into the other's 1. Periods are ``period_days`` local days long and start on the first
surveyed day of the deployment (all sites and models share one calendar, as occupancy
packages expect one column per survey occasion).

The CSVs use the "wide" layout that R's ``unmarked`` reads with ``csvToUMF(f, long = FALSE,
type = "unmarkedFrameOccu")`` (its ``formatWide``): ``site``, then ``y.1 ... y.J``, then the
site covariates ``lat``, ``lon``, then the observation covariates ``hours.1 ... hours.J``,
``doy.1 ...``, ``start.1 ...``, ``from_sunrise.1 ...`` (see ``OBS_COVARIATES``), ``NA`` where
not surveyed. formatWide takes a name ending in ``.<digits>`` as an observation covariate
and finds its columns by that suffix, so no covariate name ends another one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

import pam.store.schemas as schemas
from pam.store.runs import run_model_settings
from pam.store.atomic import write_text_atomic

# CSV column prefix -> occupancy table column, in the order they are written
OBS_COVARIATES = {"hours": "analysed_h", "doy": "doy", "start": "start_local_h", "from_sunrise": "from_sunrise_h"}
SITE_COVARIATES = ("lat", "lon")
INDEX_NAME = "histories.csv"


def _day_numbers(dates: pd.Series) -> np.ndarray:
    return pd.to_datetime(dates, format="%Y-%m-%d").to_numpy(dtype="datetime64[D]").astype(np.int64)


def _day_string(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def _period_effort(model_days: pd.DataFrame, hits: pd.DataFrame, origin: int, period_days: int,
                   n_periods: int) -> pd.DataFrame:
    """Per model x site x period: surveyed days, analysed hours and the first surveyed day's covariates."""
    scored = model_days[model_days["analysed_h"] > 0]
    days = pd.concat([scored[["model_id", "site", "local_date"]], hits[["model_id", "site", "local_date"]]],
                     ignore_index=True).drop_duplicates()
    days = days.merge(scored, on=["model_id", "site", "local_date"], how="left")
    days["day"] = _day_numbers(days["local_date"])
    days["period"] = (days["day"] - origin) // period_days + 1
    days = days[(days["period"] >= 1) & (days["period"] <= n_periods)]
    keys = ["model_id", "site", "period"]
    effort = days.groupby(keys).agg(surveyed_days=("day", "size"), analysed_h=("analysed_h", "sum"))
    first = (days.dropna(subset=["start_local_h"]).sort_values("day").groupby(keys)
             [["doy", "start_local_h", "from_sunrise_h"]].first())
    return effort.join(first, how="left").reset_index()


def detection_histories(site_days: pd.DataFrame, daily_counts: pd.DataFrame, model_days: pd.DataFrame,
                        period_days: int = 1) -> pd.DataFrame:
    """The long-form ``occupancy`` table (schemas.OCCUPANCY): every species x model x site x period.

    ``model_days``: each model's surveyed site-days with their covariates
    (``pam.analysis.survey_covariates.survey_days``); ``site_days`` sets the calendar and the sites.
    """
    days = site_days[(site_days["recorded_h"] > 0) | site_days["surveyed"]]
    pairs = daily_counts[["label", "model_id"]].drop_duplicates().sort_values(["label", "model_id"])
    if days.empty or pairs.empty:
        return schemas.OCCUPANCY.empty_table().to_pandas()
    surveyed = days[days["surveyed"]]
    origin = int(_day_numbers(surveyed["local_date"]).min()) if len(surveyed) else int(_day_numbers(days["local_date"]).min())
    last = int(_day_numbers(days["local_date"]).max())
    n_periods = max(1, (last - origin) // period_days + 1)
    sites = sorted(days["site"].unique())

    hits = daily_counts[daily_counts["detections"] > 0]
    effort = _period_effort(model_days, hits, origin, period_days, n_periods)
    hit_periods = (_day_numbers(hits["local_date"]) - origin) // period_days + 1
    detected = set(zip(hits["label"], hits["model_id"], hits["site"], hit_periods))

    grid = pd.DataFrame([(lab, m, s, p) for lab, m in pairs.itertuples(index=False) for s in sites
                         for p in range(1, n_periods + 1)], columns=["label", "model_id", "site", "period"])
    out = grid.merge(effort, on=["model_id", "site", "period"], how="left")
    out["surveyed_days"] = out["surveyed_days"].fillna(0)
    out["analysed_h"] = out["analysed_h"].fillna(0.0)
    hit = np.fromiter(((lab, m, s, p) in detected for lab, m, s, p in
                       zip(out["label"], out["model_id"], out["site"], out["period"])), dtype=bool, count=len(out))
    out["detected"] = np.where(hit, 1.0, np.where(out["surveyed_days"] > 0, 0.0, np.nan))
    start = origin + (out["period"].to_numpy() - 1) * period_days
    out["period_start"] = [_day_string(d) for d in start]
    out["period_end"] = [_day_string(d + period_days - 1) for d in start]
    return out[schemas.OCCUPANCY.names]


def _one_history(occupancy: pd.DataFrame, label: str, model_id: str | None) -> pd.DataFrame:
    rows = occupancy[occupancy["label"] == label]
    if model_id is None:
        models = sorted(rows["model_id"].unique())
        if len(models) > 1:
            raise ValueError(f"{label} has histories of {len(models)} models ({', '.join(models)}); "
                             "pass model_id to choose one")
    else:
        rows = rows[rows["model_id"] == model_id]
    return rows


def history_matrix(occupancy: pd.DataFrame, label: str, model_id: str | None = None) -> pd.DataFrame:
    """One species' site x period matrix (1/0/NaN) of one model, sites as rows, ``y.1 ... y.J`` as columns."""
    rows = _one_history(occupancy, label, model_id)
    matrix = rows.pivot(index="site", columns="period", values="detected").sort_index(axis=1)
    matrix.columns = [f"y.{p}" for p in matrix.columns]
    return matrix


HISTORY_VALUES = ["detected", *OBS_COVARIATES.values()]


def wide_history(occupancy: pd.DataFrame, label: str, model_id: str | None, sites: pd.DataFrame) -> pd.DataFrame:
    """The unmarked wide layout of one species and model (see the module docstring).

    ``sites``: ``site, lat, lon`` (``pam.analysis.survey_covariates.site_positions``). Covariates are at
    full precision and NA wherever ``y`` is NA (nothing surveyed).
    """
    rows = _one_history(occupancy, label, model_id)
    return _wide(rows.set_index(["site", "period"])[HISTORY_VALUES].unstack("period"), sites.set_index("site"))


def _wide(matrices: pd.DataFrame, positions: pd.DataFrame) -> pd.DataFrame:
    """The wide layout from one history's site x (value, period) matrices (``HISTORY_VALUES``).

    Built from numpy arrays column by column (pandas ``astype`` per block costs more than the
    numbers when hundreds of species each have their file)."""
    y = matrices["detected"].sort_index(axis=1)
    periods = list(y.columns)
    detected = y.to_numpy(dtype=np.float64)
    observed = ~np.isnan(detected)
    columns: dict[str, object] = {"site": y.index.to_numpy()}
    for j, p in enumerate(periods):
        columns[f"y.{p}"] = pd.arrays.IntegerArray(np.nan_to_num(detected[:, j]).astype(np.int64), ~observed[:, j])
    place = positions.reindex(y.index)
    for name in SITE_COVARIATES:
        columns[name] = place[name].to_numpy(dtype=np.float64)
    for prefix, column in OBS_COVARIATES.items():
        values = matrices[column].reindex(columns=periods).to_numpy(dtype=np.float64)
        values = np.where(observed, values, np.nan)
        for j, p in enumerate(periods):
            if column == "doy":  # a whole day, written without ".0"
                day = np.round(values[:, j])
                columns[f"{prefix}.{p}"] = pd.arrays.IntegerArray(np.nan_to_num(day).astype(np.int64), np.isnan(day))
            else:
                columns[f"{prefix}.{p}"] = values[:, j]
    return pd.DataFrame(columns)


def wide_histories(occupancy: pd.DataFrame, models: dict[str, str], sites: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """``(label, model_id, wide_history(...))`` for every label of ``models`` that has a history of its
    model, in label order; the same frames as ``wide_history``, from one reshape of the whole table
    (a broad model writes hundreds of histories)."""
    pairs = pd.DataFrame(list(models.items()), columns=["label", "model_id"])
    chosen = occupancy.merge(pairs, on=["label", "model_id"], how="inner")
    if chosen.empty:
        return
    periods = chosen.groupby(["label", "model_id"])["period"].unique()
    everywhere = sorted(chosen["period"].unique())
    matrices = chosen.set_index(["label", "model_id", "site", "period"])[HISTORY_VALUES].unstack("period")
    positions = sites.set_index("site")
    for (label, model_id), block in matrices.groupby(level=["label", "model_id"], sort=True):
        block = block.droplevel(["label", "model_id"])
        own = sorted(periods[label, model_id])
        if own != everywhere:  # only the periods this history has rows for, as wide_history gives
            block = block.loc[:, block.columns.get_level_values("period").isin(own)]
        yield label, model_id, _wide(block, positions)


def history_file_name(label: str, model_id: str) -> str:
    """``detection_history_<species>_model-<model id>.csv``, with unsafe characters replaced by ``_``."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)

    return f"detection_history_{safe(label)}_model-{safe(model_id)}.csv"


def run_thresholds(runs: pd.DataFrame) -> dict[tuple[str, str], list[float]]:
    """(model_id, species) -> the detection thresholds its runs used (from each run's settings)."""
    out: dict[tuple[str, str], set[float]] = {}
    for run_models, config_json in zip(runs["model_id"], runs["config_json"]):
        for model_id, settings in run_model_settings(run_models, config_json).items():
            for label, value in (settings.get("thresholds") or {}).items():
                out.setdefault((model_id, str(label)), set()).add(float(value))
    return {key: sorted(values) for key, values in out.items()}


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text_atomic(frame.to_csv(index=False, na_rep="NA"), path)


def write_history_csvs(occupancy: pd.DataFrame, folder: Path, models: dict[str, str], sites: pd.DataFrame, *,
                       min_score: float | None = None,
                       thresholds: dict[tuple[str, str], list[float]] | None = None) -> list[Path]:
    """One unmarked CSV per species, of the model ``models`` names for it; ``histories.csv``; ``periods.csv``.

    ``histories.csv`` says which model and thresholds each file holds: ``file, label,
    model_id, min_score`` (the summaries' ``--min-score``, NA if none) and ``detect_threshold``
    (the per-species thresholds of that model's detection runs, ``;``-separated if they
    changed, NA if no run recorded one). A detection counts when its score is at or above both.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("detection_history_*.csv"):
        old.unlink()
    thresholds = thresholds or {}
    written, index = [], []
    for label, model_id, wide in wide_histories(occupancy, models, sites):
        path = folder / history_file_name(label, model_id)
        _write_csv(wide, path)
        written.append(path)
        used = thresholds.get((model_id, label))
        index.append({"file": path.name, "label": label, "model_id": model_id, "min_score": min_score,
                      "detect_threshold": ";".join(f"{t:.6g}" for t in used) if used else None})
    _write_csv(pd.DataFrame(index, columns=["file", "label", "model_id", "min_score", "detect_threshold"]),
               folder / INDEX_NAME)
    periods = occupancy[["period", "period_start", "period_end"]].drop_duplicates().sort_values("period")
    periods.insert(0, "column", [f"y.{p}" for p in periods["period"]])
    periods.to_csv(folder / "periods.csv", index=False)
    return written
