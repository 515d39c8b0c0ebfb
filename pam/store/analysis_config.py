"""The settings the analysis reads, as the store's last scan was given them.

Summaries, the report and the exports count days and hours on each site's clock and place
sites on the map (``sites.<site>``), and filter by ``summaries.*``. Every scan writes the
``sites`` and ``summaries`` sections of its config to ``STORE/config/analysis_config.parquet``
(table ``analysis_config``, docs/store.md), so that ``pam summarize STORE`` without
``--config`` counts in the same local time as the nightly run did, instead of in UTC.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
from pydantic import ValidationError

import pam.store.schemas as schemas
from pam.config import PamConfig, SiteConfig
from pam.store.store import Store


ANALYSIS_CONFIG_FILE = "config/analysis_config.parquet"  # inside the store, local or on object storage


def remember_analysis_config(store: Store, config: PamConfig) -> None:
    """Record ``config``'s sites and summaries settings as the store's (written by every scan;
    rewritten only when they changed)."""
    row = {"sites_json": json.dumps(config.model_dump(mode="json")["sites"], sort_keys=True),
           "summaries_json": json.dumps(config.summaries.model_dump(mode="json"), sort_keys=True),
           "written_at": datetime.now(timezone.utc)}
    old = _read_row(store)
    if old and (old["sites_json"], old["summaries_json"]) == (row["sites_json"], row["summaries_json"]):
        return
    store.location.write_parquet(pa.Table.from_pylist([row], schema=schemas.with_version("analysis_config")),
                                 ANALYSIS_CONFIG_FILE)


def _read_row(store: Store) -> dict | None:
    if not store.location.exists(ANALYSIS_CONFIG_FILE):
        return None
    try:
        return store.location.read_parquet(ANALYSIS_CONFIG_FILE, schemas.ANALYSIS_CONFIG).to_pylist()[0]
    except (OSError, IndexError, pa.ArrowInvalid):
        return None


def stored_analysis_config(store: Store) -> PamConfig | None:
    """A config holding the store's remembered sites and summaries settings (everything else at
    its default); None when no scan has recorded them (a store from before they were kept)."""
    row = _read_row(store)
    if row is None:
        return None
    try:
        return PamConfig.model_validate({"sites": json.loads(row["sites_json"] or "{}"),
                                         "summaries": json.loads(row["summaries_json"] or "{}")})
    except (ValueError, ValidationError):
        return None  # unreadable or from a newer pam: the defaults, as before the table existed


def site_differences(config: PamConfig, stored: PamConfig) -> list[str]:
    """Sites whose clock or position differ between ``config`` and the store's, e.g.
    ``SM4-CREEK (clock America/New_York here, UTC in the store)``; [] when they agree."""
    out = []
    for site in sorted(set(config.sites) | set(stored.sites)):
        mine, theirs = config.sites.get(site, SiteConfig()), stored.sites.get(site, SiteConfig())
        changed = [f"{what} {a} here, {b} in the store" for what, a, b in
                   (("clock", _clock(mine), _clock(theirs)), ("position", _position(mine), _position(theirs)))
                   if a != b]
        if changed:
            out.append(f"{site} ({'; '.join(changed)})")
    return out


def _clock(site: SiteConfig) -> str:
    return site.timezone or (f"UTC{site.utc_offset}" if site.utc_offset else "UTC")


def _position(site: SiteConfig) -> str:
    return "none" if site.lat is None and site.lon is None else f"{site.lat}, {site.lon}"
