"""A broad model's season (200 species, BirdNET's Scientific_Common labels and plain ones) through the
outputs: species names, filters by any name, the report's top-N figures and full tables, exports with
common names, and summaries that still count every species right."""

import csv
import re

import pandas as pd
import pytest

from pamstore import broad_labels, broad_season, build
from pam.analysis.export import export_detections
from pam.analysis.report import build_report
from pam.analysis.review import make_review
from pam.analysis.summaries import summarize
from pam.store.query import query_detections
from pam.store.species import (UnknownSpecies, closest_species, common_name, resolve_species, species_name,
                               unknown_species_message)

BOBWHITE = "Colinus virginianus_Northern Bobwhite"


@pytest.mark.parametrize("label, scientific, common", [
    (BOBWHITE, "Colinus virginianus", "Northern Bobwhite"),
    ("Antrostomus carolinensis_Chuck-will's-widow", "Antrostomus carolinensis", "Chuck-will's-widow"),
    ("Human vocal_Human vocal", "Human vocal", "Human vocal"),  # BirdNET's non-bird classes
    ("bobwhite_covey", None, None),  # pam's plain labels stay whole
    ("eastern_whip-poor-will", None, None),
    ("Noise", None, None),
    ("Genus species_common name", None, None),  # the common part must start with a capital
    ("a_B_C", None, None),
])
def test_species_name_splits_only_scientific_common_labels(label, scientific, common):
    name = species_name(label)
    assert (name.label, name.scientific, name.common) == (label, scientific, common)
    assert common_name(label) == (common or label)


def test_any_name_in_any_case_resolves_to_the_labels():
    labels = broad_labels(200)
    assert resolve_species(["northern bobwhite"], labels) == ([BOBWHITE], [])
    assert resolve_species(["COLINUS VIRGINIANUS", "bobwhite_covey", "dodo"], labels) == (
        [BOBWHITE, "bobwhite_covey"], ["dodo"])
    assert resolve_species([BOBWHITE.lower(), "Northern Bobwhite"], labels) == ([BOBWHITE], [])  # once


def test_unknown_species_message_names_the_closest():
    labels = broad_labels(200)
    assert closest_species("Nothern Bobwhite", labels)[0] == f"Northern Bobwhite ({BOBWHITE})"
    assert f"Barred Owl (Strix varia_Barred Owl)" in closest_species("barred owl!", labels)
    message = unknown_species_message(["Nothern Bobwite"], labels)
    assert "\n" not in message and "'Nothern Bobwite' (closest: Northern Bobwhite" in message
    assert "200 species have detections" in message
    assert "(1 species has detections;" in unknown_species_message(["dodo"], [BOBWHITE])


@pytest.fixture(scope="module")
def broad(tmp_path_factory):
    root = tmp_path_factory.mktemp("broad")
    recs = broad_season()
    store = build(root / "store", recs)
    raw = pd.DataFrame([(r.site, r.start[:10], d[1]) for r in recs for d in r.detections],
                       columns=["site", "date", "label"])
    return store, raw, root


def test_queries_take_label_scientific_or_common_name_and_several(broad):
    store, raw, _root = broad
    by_label = query_detections(store, species=BOBWHITE, sites="B").rows
    assert len(by_label) == ((raw["label"] == BOBWHITE) & (raw["site"] == "B")).sum() > 0
    for asked in ("northern bobwhite", "Colinus Virginianus", BOBWHITE.upper()):
        assert query_detections(store, species=asked, sites="B").rows.equals(by_label)
    several = query_detections(store, species=["Barred Owl", "barred_owl", "Example Bird 003"]).rows
    assert sorted(several["label"].unique()) == ["Avis exemplaris003_Example Bird 003", "Strix varia_Barred Owl",
                                                 "barred_owl"]
    assert len(several) == raw["label"].isin(several["label"].unique()).sum()


def test_an_unknown_species_is_one_line_with_the_closest(broad):
    store, _raw, _root = broad
    with pytest.raises(UnknownSpecies) as err:
        query_detections(store, species=["Barred Owl", "Northren Cardinal"], sites="A")
    text = str(err.value)
    assert "\n" not in text and text.startswith("unknown species 'Northren Cardinal' (closest: Northern Cardinal")


def test_report_draws_the_top_species_and_lists_all_200(broad):
    store, raw, root = broad
    rep = build_report(store, root / "report", top=5)
    page = rep.html_path.read_text()
    assert "<h2>Species by site: the top 5 of 200 species by detections</h2>" in page
    assert "<h2>Diel activity of the top 5 of 200 species by detections</h2>" in page
    assert page.count("and 195 more species, not drawn") == 2 and rep.figures == 3
    table = page.split("<h2>Species</h2>")[1].split("<h2>")[0]
    assert "class='scroll'" in table and "class='sortable'" in table
    rows = re.findall(r"<tr><td>([^<]*)</td><td class='t'>(?:<i>([^<]*)</i>)?</td><td>([\d,]+)</td>", table)
    assert len(rows) == 200  # every species, by common name (plain labels as they are), most detections first
    counts = raw["label"].value_counts()
    assert rows[0] == ("Northern Bobwhite", "Colinus virginianus", f"{counts[BOBWHITE]:,}")
    assert [int(n.replace(",", "")) for _c, _s, n in rows] == sorted(counts.to_list(), reverse=True)
    assert ("bobwhite_covey", "", f"{counts['bobwhite_covey']:,}") in rows
    first = {r["species"]: r for r in rep.species_rows}
    assert (first[BOBWHITE]["common_name"], first[BOBWHITE]["scientific_name"]) == ("Northern Bobwhite",
                                                                                     "Colinus virginianus")
    dates = raw[raw["label"] == "Avis exemplaris150_Example Bird 150"]["date"]
    row = first["Avis exemplaris150_Example Bird 150"]
    assert (row["first_date"], row["last_date"]) == (dates.min(), dates.max())
    assert rep.markdown.count("\n| ") == 25 + 1 and "and 175 more species" in rep.markdown


def test_summaries_count_every_species_right(broad):
    store, raw, _root = broad
    tables = summarize(store).tables  # sites without a clock: UTC days
    daily = tables["daily_counts"]
    got = daily[daily["detections"] > 0].groupby(["site", "local_date", "label"])["detections"].sum()
    want = raw.groupby(["site", "date", "label"]).size()
    assert got.to_dict() == {k: v for k, v in want.to_dict().items()}
    assert len(daily) == 200 * 4 * 5  # zeros on every surveyed day of every species
    rich = tables["site_richness"].set_index("site")["species"]
    assert rich.to_dict() == raw.groupby("site")["label"].nunique().to_dict()
    diel = tables["diel"].groupby("label")["detections"].sum()
    assert diel.to_dict() == raw["label"].value_counts().to_dict()
    occ = tables["occupancy"]
    hits = occ[occ["detected"] == 1].groupby("label")["site"].nunique()
    assert hits.to_dict() == raw.groupby("label")["site"].nunique().to_dict()
    assert len(list((store.summaries_dir / "occupancy").glob("detection_history_*.csv"))) == 200


def read_tsv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="\t"))


def test_raven_and_audacity_show_common_names_csv_keeps_the_label(broad):
    store, _raw, root = broad
    raven = export_detections(store, root / "raven", "raven", species=["northern bobwhite", "bobwhite_covey"],
                              sites=["A"])
    rows = read_tsv(raven.files[0])
    head = rows[0]
    assert head[7:10] == ["Common Name", "Species", "Score"]
    names = {(r[7], r[8]) for r in rows[1:]}
    assert names == {("Northern Bobwhite", BOBWHITE), ("bobwhite_covey", "bobwhite_covey")}
    audacity = export_detections(store, root / "aud", "audacity", species="Colinus virginianus", sites=["A"])
    lines = audacity.files[0].read_text().splitlines()
    assert lines and all(re.fullmatch(r"[\d.]+\t[\d.]+\tNorthern Bobwhite 0\.\d{3}", line) for line in lines)
    table = export_detections(store, root / "c.csv", "csv", species="northern bobwhite", sites=["A"])
    frame = pd.read_csv(table.files[0])
    assert list(frame.columns[frame.columns.get_loc("label"):][:3]) == ["label", "common_name", "scientific_name"]
    assert set(frame["label"]) == {BOBWHITE} and set(frame["common_name"]) == {"Northern Bobwhite"}


def test_review_takes_common_names(tmp_path):
    import numpy as np
    import soundfile as sf

    from pamstore import Rec

    wav = tmp_path / "20240501_050000.WAV"
    sf.write(str(wav), np.zeros(8000 * 60, dtype=np.float32), 8000)
    wren = "Thryothorus ludovicianus_Carolina Wren"
    store = build(tmp_path / "store", [Rec("r1", "A", "2024-05-01T05:00", 60, path=str(wav), detections=[
        (3.0, wren, 0.9, "m1"), (30.0, "bobwhite_covey", 0.8, "m1"), (45.0, BOBWHITE, 0.7, "m1")])])
    res = make_review(store, tmp_path / "rev", species=["carolina wren", "COLINUS VIRGINIANUS"], n=3)
    review = pd.read_csv(res.csv)
    assert res.clips == 2 and sorted(review["species"]) == [BOBWHITE, wren]  # the label, for review-import
    with pytest.raises(UnknownSpecies, match="closest: Carolina Wren"):
        make_review(store, tmp_path / "rev2", species=["carolina wrn"])
    from pam.store.query import full_scan, query_detections

    by_name = full_scan(store, species="Carolina Wren")  # the baseline resolves names as the query does
    assert list(by_name["label"]) == [wren] and by_name.equals(query_detections(store, species="carolina wren").rows)
