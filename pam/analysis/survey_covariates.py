"""Survey covariates for occupancy models: when, in the day and in the season, a site was surveyed.

One row per model x site x local day on which that model scored audio there
(``pam.analysis.effort.analysed_by_model``):

* ``analysed_h``: hours the model scored that day;
* ``doy``: day of year of the site's local date (1 = 1 January, up to 366);
* ``start_local_h``: the site's local clock time, in decimal hours (0 <= h < 24), at which the
  first scored audio of that day begins. A recording running on from the previous evening
  starts the day at 0.0, as it gives its hours to both days in every other summary;
* ``from_sunrise_h``: hours from that day's sunrise to that first audio (negative: before
  sunrise), with sunrise from ``pam.analysis.solar`` at ``sites.<site>.lat``/``lon``. NaN where the
  site has no position in the config, or the sun does not rise that day.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pam.config import PamConfig
from pam.analysis.effort import HOUR_US, local_micros
from pam.analysis.solar import sunrise_utc_h

DAY_US = 24 * HOUR_US
COLUMNS = ["model_id", "site", "local_date", "analysed_h", "doy", "start_local_h", "from_sunrise_h"]


def site_positions(config: PamConfig, sites) -> pd.DataFrame:
    """``site, lat, lon`` for ``sites`` from ``sites.<site>.lat/lon`` in the config (NaN when not given)."""
    rows = []
    for site in sites:
        conf = config.sites.get(site)
        lat = conf.lat if conf is not None and conf.lat is not None else np.nan
        lon = conf.lon if conf is not None and conf.lon is not None else np.nan
        rows.append((site, float(lat), float(lon)))
    return pd.DataFrame(rows, columns=["site", "lat", "lon"]).astype({"site": object})


def survey_days(model_hours: pd.DataFrame, config: PamConfig) -> pd.DataFrame:
    """Each model's surveyed site-days with their covariates (see the module docstring)."""
    cells = model_hours[model_hours["analysed_h"] > 0]
    if cells.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("model_id", "site", "local_date") else np.float64)
                             for c in COLUMNS})
    days = cells.groupby(["model_id", "site", "local_date"], as_index=False, sort=True).agg(
        analysed_h=("analysed_h", "sum"), first_us=("first_us", "min"))
    day_number = pd.to_datetime(days["local_date"], format="%Y-%m-%d").to_numpy(dtype="datetime64[D]").astype(np.int64)
    start_h = np.empty(len(days))
    from_sunrise = np.full(len(days), np.nan)
    first_us = days["first_us"].to_numpy(dtype=np.int64)
    positions = site_positions(config, pd.unique(days["site"])).set_index("site")
    for site, idx in days.groupby("site").indices.items():
        local_us = local_micros(first_us[idx], config.site_tz(site))
        start_h[idx] = (local_us - np.floor_divide(local_us, DAY_US) * DAY_US) / HOUR_US
        lat, lon = positions.loc[site, "lat"], positions.loc[site, "lon"]
        if not (np.isnan(lat) or np.isnan(lon)):
            sunrise_h = sunrise_utc_h(day_number[idx], lat, lon)  # hours after 00:00 UTC of the local date
            from_sunrise[idx] = (first_us[idx] - day_number[idx] * DAY_US) / HOUR_US - sunrise_h
    days["doy"] = pd.to_datetime(days["local_date"], format="%Y-%m-%d").dt.day_of_year.astype(np.float64)
    days["start_local_h"] = start_h
    days["from_sunrise_h"] = from_sunrise
    return days[COLUMNS]
