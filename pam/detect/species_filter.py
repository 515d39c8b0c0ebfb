"""Species lists by place and date: which classes of a model each recording may report.

As BirdNET-Analyzer's ``--lat --lon --week --sf_thresh --slist``, from the config
(``detect.species_filter``, ``sites.<site>``), for each recording, first match wins:

1. ``sites.<site>.species_list``: a CSV of the species to keep at that site;
2. ``detect.species_filter.list``: a CSV of the species to keep at every site;
3. ``detect.species_filter.location`` (on by default) and the site has ``lat`` and ``lon``:
   the species BirdNET's metadata model expects there in the recording's week (BirdNET's
   48-week year, of the recording's UTC date; week -1, the whole year, for a recording
   without a time; ``detect.species_filter.week`` fixes one), scoring at least
   ``detect.species_filter.threshold`` (0.03);
4. otherwise the recording is not filtered.

A filter applies to the models whose classes carry scientific names (BirdNET, ONNX cards
with ``scientific_names``); pam's own single-species checkpoints carry none and are never
filtered, so their settings hash stays what it was. A class is kept by a list when its
label, scientific or common name is on it (a BirdNET-Analyzer list line
``Colinus virginianus_Northern Bobwhite`` counts as both names); the location filter keeps
the classes the metadata model does not know (a model's own non-BirdNET classes).

``filter_spec`` gives what decides the filter (into the settings hash and the run's
``config_json``); ``class_masks`` turns it into one mask row per distinct filter of a batch
of recordings, which thresholding applies (``pam.detect.scoring.ScoringLane``).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from pam.config import ConfigError, DetectConfig, SiteConfig
from pam.detect.contract import DetectionModel

ALL_WEEKS = -1


def read_species_list(path: str | Path) -> tuple[set[str], str]:
    """The names of a species list (first CSV column; a header row is harmless) and its SHA-256."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"species list {path}: cannot read it ({exc.strerror}); give a CSV of labels "
                          "or scientific names, one per line") from None
    names: set[str] = set()
    for row in csv.reader(raw.decode("utf-8-sig", errors="replace").splitlines()):
        if row and row[0].strip() and not row[0].lstrip().startswith("#"):
            name = row[0].strip()
            names.add(name)
            scientific, sep, common = name.partition("_")
            if sep and scientific and common and " " in scientific:  # BirdNET-Analyzer's 'Sci name_Common name'
                names.update((scientific, common))
    if not names:
        raise ConfigError(f"species list {path} is empty; give a CSV of labels or scientific names, one per line")
    return names, hashlib.sha256(raw).hexdigest()


def _list_entry(path: str) -> dict:
    _, digest = read_species_list(path)
    return {"path": str(path), "sha256": digest}


def _range_model_id() -> str | None:
    """The metadata model's id, or None when the birdnet extra is not installed."""
    from pam.detect.birdnet import METADATA_FILE, BirdNETError, read_graph

    try:
        return read_graph(METADATA_FILE)[1]
    except BirdNETError:
        return None


def _knows_birdnet_species(model: DetectionModel) -> bool:
    from pam.detect.birdnet import BirdNETError, read_species

    try:
        known = {s.scientific_name for s in read_species()}
    except BirdNETError:
        return False
    return any(s in known for s in model.scientific_names or [])


def filter_spec(conf: DetectConfig, sites: dict[str, SiteConfig] | None, model: DetectionModel) -> dict | None:
    """What decides ``model``'s species filter, as JSON; None when no recording is filtered.

    Keys: ``list`` (the project list: path and SHA-256), ``site_lists`` (site -> the same),
    ``location`` (``threshold``, ``week``, the metadata model's id and ``sites``: site ->
    [lat, lon]). Lists that cannot be read, or that name none of the model's classes, are a
    ConfigError before any work.
    """
    if not model.scientific_names:
        return None
    sf = conf.species_filter
    sites = sites or {}
    spec: dict = {}
    if sf.list:
        spec["list"] = _list_entry(sf.list)
    site_lists = {name: _list_entry(s.species_list) for name, s in sorted(sites.items()) if s.species_list}
    if site_lists:
        spec["site_lists"] = site_lists
    placed = {name: [s.lat, s.lon] for name, s in sorted(sites.items())
              if s.lat is not None and s.lon is not None and not s.species_list}
    if sf.location and not sf.list and placed and _knows_birdnet_species(model):
        spec["location"] = {"threshold": sf.threshold, "week": sf.week, "range_model": _range_model_id(),
                            "sites": placed}
    for entry in [spec.get("list"), *site_lists.values()]:
        if entry and not _list_matches(entry["path"], model):
            raise ConfigError(f"species list {entry['path']} names none of model {model.name}'s classes; "
                              "give its labels or scientific names (e.g. 'Colinus virginianus')")
    return spec or None


def _list_matches(path: str, model: DetectionModel) -> bool:
    names, _ = read_species_list(path)
    return bool(_kept_by_names(names, model).any())


def _kept_by_names(names: set[str], model: DetectionModel) -> np.ndarray:
    n = len(model.classes)
    sci = model.scientific_names or [None] * n
    common = model.common_names or [None] * n
    return np.fromiter((c in names or s in names or k in names for c, s, k in zip(model.classes, sci, common)),
                       dtype=bool, count=n)


def week_of(start_time: object) -> int:
    """BirdNET's week of a recording's UTC date; ALL_WEEKS when it has no time."""
    from pam.detect.birdnet_species import week_48

    if start_time is None or pd.isna(start_time):
        return ALL_WEEKS
    ts = pd.Timestamp(start_time)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return week_48(ts.date())


def filter_of(spec: dict, site: object, start_time: object) -> tuple:
    """Which filter a recording gets: ('site_list', site), ('list',), ('location', lat, lon, week) or ('none',)."""
    site = site if isinstance(site, str) else None
    if site in spec.get("site_lists", {}):
        return ("site_list", site)
    if "list" in spec:
        return ("list",)
    location = spec.get("location")
    if location and site in location["sites"]:
        lat, lon = location["sites"][site]
        week = location["week"] if location["week"] is not None else week_of(start_time)
        return ("location", lat, lon, week)
    return ("none",)


def class_masks(spec: dict | None, model: DetectionModel, sites: pd.Series, start_times: pd.Series
                ) -> tuple[np.ndarray, np.ndarray, list[tuple]] | None:
    """(row per recording [N], masks [M, classes] bool, the M filters) for recordings with
    these ``sites`` and ``start_times``; None when nothing is filtered. The metadata model
    runs once for all the distinct (place, week) pairs."""
    if not spec:
        return None
    keys = [filter_of(spec, s, t) for s, t in zip(sites, start_times)]
    distinct = list(dict.fromkeys(keys))
    masks = np.ones((len(distinct), len(model.classes)), dtype=bool)
    places = [k for k in distinct if k[0] == "location"]
    if places:
        masks_at = _location_masks(model, [k[1:] for k in places], spec["location"]["threshold"])
        for k, m in zip(places, masks_at):
            masks[distinct.index(k)] = m
    for j, k in enumerate(distinct):
        if k[0] == "site_list":
            masks[j] = _kept_by_names(read_species_list(spec["site_lists"][k[1]]["path"])[0], model)
        elif k[0] == "list":
            masks[j] = _kept_by_names(read_species_list(spec["list"]["path"])[0], model)
    index = {k: j for j, k in enumerate(distinct)}
    return np.array([index[k] for k in keys], dtype=np.int64), masks, distinct


def _location_masks(model: DetectionModel, places: list[tuple], threshold: float) -> np.ndarray:
    """[len(places), classes]: the model's classes expected at each (lat, lon, week)."""
    from pam.detect.birdnet import read_species
    from pam.detect.birdnet_species import place_scores

    scores = place_scores(places) >= threshold  # [P, 6522] in BirdNET's order
    column = {s.scientific_name: i for i, s in enumerate(read_species())}
    cols = np.array([column.get(s, -1) if s else -1 for s in model.scientific_names or [None] * len(model.classes)])
    known = cols >= 0
    masks = np.ones((len(places), len(model.classes)), dtype=bool)
    masks[:, known] = scores[:, cols[known]]
    return masks


def describe(spec: dict | None) -> str:
    """One line for people: which filter applied where."""
    if not spec:
        return "no species filter (no species list, and no site with lat/lon for BirdNET's location filter)"
    parts = []
    if "site_lists" in spec:
        parts.append("species lists at " + ", ".join(f"{s} ({e['path']})" for s, e in spec["site_lists"].items()))
    if "list" in spec:
        parts.append(f"species list {spec['list']['path']} at {'the other' if 'site_lists' in spec else 'all'} sites")
    if "location" in spec:
        loc = spec["location"]
        week = "each recording's week" if loc["week"] is None else f"week {loc['week']}"
        parts.append(f"BirdNET's location filter (threshold {loc['threshold']}, {week}) at "
                     + ", ".join(loc["sites"]))
    return "; ".join(parts) + "; other sites not filtered"
