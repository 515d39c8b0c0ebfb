"""Detection histories for occupancy models: site x survey period, per species.

A cell is 1 when the species was detected at the site in the period, 0 when the site was
surveyed (audio scored) in the period and the species was not detected, and missing (NA)
when nothing was surveyed. Periods are ``period_days`` local days long and start on the
first surveyed day of the deployment (all sites share one calendar, as occupancy packages
expect one column per survey occasion).

The CSVs use the "wide" layout of R's ``unmarked`` (``csvToUMF(f, long = FALSE,
type = "unmarkedFrameOccu")`` or ``formatWide``): column ``site``, then ``y.1 ... y.J``, then
the observation covariate ``hours.1 ... hours.J`` (analysed hours per period), NA for missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

import pam.store.schemas as schemas


def _day_numbers(dates: pd.Series) -> np.ndarray:
    return pd.to_datetime(dates, format="%Y-%m-%d").to_numpy(dtype="datetime64[D]").astype(np.int64)


def _day_string(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def detection_histories(site_days: pd.DataFrame, daily_counts: pd.DataFrame, period_days: int = 1) -> pd.DataFrame:
    """The long-form ``occupancy`` table (schemas.OCCUPANCY): every species x site x period."""
    days = site_days[(site_days["recorded_h"] > 0) | site_days["surveyed"]]
    species = sorted(daily_counts["label"].unique())
    if days.empty or not species:
        return schemas.OCCUPANCY.empty_table().to_pandas()
    surveyed = days[days["surveyed"]]
    origin = int(_day_numbers(surveyed["local_date"]).min()) if len(surveyed) else int(_day_numbers(days["local_date"]).min())
    last = int(_day_numbers(days["local_date"]).max())
    n_periods = max(1, (last - origin) // period_days + 1)
    sites = sorted(days["site"].unique())

    surveyed = surveyed.assign(period=(_day_numbers(surveyed["local_date"]) - origin) // period_days + 1)
    surveyed = surveyed[surveyed["period"] >= 1]
    effort = surveyed.groupby(["site", "period"]).agg(surveyed_days=("local_date", "size"), analysed_h=("analysed_h", "sum"))

    hits = daily_counts[daily_counts["detections"] > 0]
    hits = hits.assign(period=(_day_numbers(hits["local_date"]) - origin) // period_days + 1)
    detected = set(zip(hits["label"], hits["site"], hits["period"]))

    grid = pd.MultiIndex.from_product([species, sites, range(1, n_periods + 1)], names=["label", "site", "period"])
    out = grid.to_frame(index=False)
    out = out.merge(effort.reset_index(), on=["site", "period"], how="left")
    out["surveyed_days"] = out["surveyed_days"].fillna(0)
    out["analysed_h"] = out["analysed_h"].fillna(0.0)
    hit = np.fromiter(((lab, s, p) in detected for lab, s, p in zip(out["label"], out["site"], out["period"])),
                      dtype=bool, count=len(out))
    out["detected"] = np.where(hit, 1.0, np.where(out["surveyed_days"] > 0, 0.0, np.nan))
    start = origin + (out["period"].to_numpy() - 1) * period_days
    out["period_start"] = [_day_string(d) for d in start]
    out["period_end"] = [_day_string(d + period_days - 1) for d in start]
    return out[schemas.OCCUPANCY.names]


def history_matrix(occupancy: pd.DataFrame, label: str) -> pd.DataFrame:
    """One species' site x period matrix (1/0/NaN), sites as rows, ``y.1 ... y.J`` as columns."""
    rows = occupancy[occupancy["label"] == label]
    matrix = rows.pivot(index="site", columns="period", values="detected").sort_index(axis=1)
    matrix.columns = [f"y.{p}" for p in matrix.columns]
    return matrix


def _file_name(label: str) -> str:
    return "detection_history_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + ".csv"


def write_history_csvs(occupancy: pd.DataFrame, folder: Path) -> list[Path]:
    """One unmarked-style CSV per species, plus ``periods.csv`` mapping y.k to local dates."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("detection_history_*.csv"):
        old.unlink()
    written = []
    for label in sorted(occupancy["label"].unique()):
        rows = occupancy[occupancy["label"] == label]
        y = history_matrix(occupancy, label)
        hours = rows.pivot(index="site", columns="period", values="analysed_h").sort_index(axis=1)
        hours = hours.where(y.to_numpy() == y.to_numpy())  # NA where not surveyed, like y
        hours.columns = [f"hours.{p}" for p in hours.columns]
        wide = pd.concat([y.astype("Int64"), hours.round(4)], axis=1).reset_index()
        path = folder / _file_name(label)
        tmp = path.with_name(f".{path.name}.tmp")
        wide.to_csv(tmp, index=False, na_rep="NA")
        tmp.replace(path)
        written.append(path)
    periods = occupancy[["period", "period_start", "period_end"]].drop_duplicates().sort_values("period")
    periods.insert(0, "column", [f"y.{p}" for p in periods["period"]])
    periods.to_csv(folder / "periods.csv", index=False)
    return written
