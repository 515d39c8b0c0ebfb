"""The bundled-model script end to end on a tiny synthetic two-site set, and the shipped model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pam.detect.checkpoint import bundled_model_path, load_checkpoint
from pam.train import bundled

from train_data import tiny_config, write_clip_set

def test_bundled_script_writes_a_loadable_checkpoint_with_cross_site_numbers(tmp_path: Path, capsys) -> None:
    write_clip_set(tmp_path, 16, sites=bundled.SITES, classes=("bobwhite_covey",))
    cfg = tiny_config(tmp_path, train__epochs=1, train__repeats=1, model__name="bobwhite-test")
    out = tmp_path / "m.pt"
    assert bundled.main(["--config", str(cfg), "--out", str(out), "--seeds", "0", "--no-progress",
                         "--report", str(tmp_path / "cross.json"),
                         "--set-when-training-on", "WLFW_GA", "train.lr=0.005"]) == 0
    printed = capsys.readouterr().out
    assert "WLFW_AL->WLFW_GA overlay=off seed 0" in printed and "WLFW_GA->WLFW_AL overlay=on seed 0" in printed
    model = load_checkpoint(out)
    card = model.card
    assert card.classes == ["bobwhite_covey"] and card.name == "bobwhite-test"
    assert 0.0 <= card.thresholds["bobwhite_covey"] <= 1.0
    for key in ("WLFW_AL->WLFW_GA", "WLFW_GA->WLFW_AL"):
        for aug in ("overlay", "no_overlay"):
            assert 0.0 <= card.metrics["cross_site"][key][aug]["ap"] <= 1.0
            run = card.metrics["cross_site_runs"][key][aug][0]
            # Each cross-site run held out the other site group entirely as its test split.
            assert f"split.test_sites=[{key.split('->')[1]}]" in run["set"]
            assert ("augment.overlay.p=0" in run["set"]) == (aug == "no_overlay")
    # A recipe chosen for one training site applies to its runs only; the shipped recipe is also measured both ways.
    protocol_ga = card.metrics["cross_site_runs"]["WLFW_GA->WLFW_AL"]["overlay"][0]["set"]
    protocol_al = card.metrics["cross_site_runs"]["WLFW_AL->WLFW_GA"]["overlay"][0]["set"]
    shipped_ga = card.metrics["cross_site_shipped_recipe_runs"]["WLFW_GA->WLFW_AL"]["overlay"][0]["set"]
    assert "train.lr=0.005" in protocol_ga and "train.lr=0.005" not in protocol_al + shipped_ga
    assert card.training["data_source"]["repository"] == "GAMELab-UGA/NorthernBobwhiteCNN"
    assert (tmp_path / "cross.md").read_text().count("WLFW_") >= 16
    assert model.model_id in printed


def test_shipped_bobwhite_model_card() -> None:
    import json

    from pam.detect.checkpoint import model_id_of
    from pam.train.clip_sidecar import read_sidecar, sidecar_path

    path = bundled_model_path()
    if not path.is_file():
        pytest.skip("the bundled model has not been built in this checkout")
    assert path.stat().st_size < 5_000_000
    card = load_checkpoint(path).card
    assert card.classes == ["bobwhite_covey"] and card.window_s == 3.0
    assert 0.0 < card.thresholds["bobwhite_covey"] < 1.0
    assert set(card.metrics["cross_site"]) == {"WLFW_AL->WLFW_GA", "WLFW_GA->WLFW_AL"}
    for per in card.metrics["cross_site"].values():
        assert set(per) == {"overlay", "no_overlay"}
    assert "doi:10.1002/rse2.294" in json.dumps(card.training)  # the data's credit travels with the model
    # The id every store's detections carry: the checkpoint's bytes never change once shipped.
    assert model_id_of(path) == "f8cb50bfb2e8dddf"
    # Every clip it was trained and validated on, for pam evaluate: in a small sidecar beside it, tied
    # to that id (writing the list onto the card would have changed the id).
    sidecar = sidecar_path(path)
    assert sidecar.is_file() and sidecar.stat().st_size < 20_000 and "clips" not in card.training
    split = read_sidecar(path, "f8cb50bfb2e8dddf")["split"]
    assert {s: split.count(s) for s in ("train", "val", "test")} == card.training["data"]["per_split"]


def test_shipped_model_stays_quiet_on_foreign_soundscapes(shared_data: Path, tmp_path: Path) -> None:
    """Real recordings from other habitats (OpenSoundscape and Perch test audio, no bobwhite, never
    trained on) are what a new site adds; a detector that flags a quarter of their windows would
    bury a night's real calls. The previous bundled model flagged 39 of 153 windows; this one 4."""
    from typer.testing import CliRunner

    from pam.cli.main import app
    from pam.store.store import Store

    conf = tmp_path / "all-scores.yaml"
    conf.write_text("detect:\n  min_score: 0.0\n")  # keep every window's score
    for name in ("opensoundscape", "perch"):
        res = CliRunner().invoke(app, ["detect", str(shared_data / "field" / name), "--store", str(tmp_path / "store"),
                                       "--config", str(conf), "--no-prefect", "--workers", "0", "--show", "0"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
    scores = Store(tmp_path / "store").read_detections()["score"]
    threshold = load_checkpoint(bundled_model_path()).card.thresholds["bobwhite_covey"]
    assert len(scores) > 100  # the folders really were scored
    assert (scores >= threshold).mean() <= 0.05, f"{(scores >= threshold).sum()} of {len(scores)} windows flagged"
