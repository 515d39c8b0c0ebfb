"""The bundled-model script end to end on a tiny synthetic two-site set, and the shipped model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pam.checkpoint import bundled_model_path, load_checkpoint
from pam.model import Architecture
from pam.train import bundled

RATE = 16000


def write_site(folder: Path, site: str, n: int, rng: np.random.Generator) -> list[str]:
    rows = []
    t = np.arange(int(0.3 * RATE)) / RATE
    for i in range(n):
        x = rng.normal(0, 0.02, 4 * RATE).astype(np.float32)
        label = "bobwhite_covey" if i % 2 == 0 else "none"
        if label != "none":
            for at in (0.5, 2.0, 3.2):  # calls spread so that every 3-s crop holds one
                k = int(at * RATE)
                x[k:k + len(t)] += (0.2 * np.sin(2 * np.pi * (1500 * t + 2000 * t**2))).astype(np.float32)
        name = f"clips/{site}_{i}.wav"
        sf.write(folder / name, x, RATE, subtype="PCM_16")
        rows.append(f"{name},{label},{site}")
    return rows


def test_bundled_script_writes_a_loadable_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "clips").mkdir()
    rng = np.random.default_rng(0)
    rows = write_site(tmp_path, "WLFW_AL", 8, rng) + write_site(tmp_path, "WLFW_GA", 8, rng)
    (tmp_path / "labels.csv").write_text("path,label,site\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(bundled, "ARCH", Architecture(width=4, stages=2, dropout=0.0))
    monkeypatch.setattr(bundled, "CONFIG", replace(bundled.CONFIG, epochs=1, repeats=1, batch_size=4))
    out = tmp_path / "m.pt"
    assert bundled.main(["--data", str(tmp_path), "--out", str(out), "--eval-seeds", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "WLFW_AL->WLFW_GA" in printed and "WLFW_GA->WLFW_AL" in printed
    model = load_checkpoint(out)
    card = model.card
    assert card.classes == ["bobwhite_covey"] and card.window_s == 3.0 and card.sample_rate == 16000
    assert 0.0 <= card.thresholds["bobwhite_covey"] <= 1.0
    for key in ("WLFW_AL->WLFW_GA", "WLFW_GA->WLFW_AL"):
        for aug in ("overlay", "no_overlay"):
            assert 0.0 <= card.metrics["cross_site"][key][aug]["ap"] <= 1.0
    assert card.training["data"]["repository"] == "GAMELab-UGA/NorthernBobwhiteCNN"
    assert sum(card.training["data"]["clips"].values()) == 16
    assert model.model_id in printed


def test_shipped_bobwhite_model_card() -> None:
    path = bundled_model_path()
    if not path.is_file():
        pytest.skip("the bundled model has not been built in this checkout")
    assert path.stat().st_size < 5_000_000
    card = load_checkpoint(path).card
    assert card.classes == ["bobwhite_covey"] and card.window_s == 3.0
    assert card.spectrogram == bundled.SPECTROGRAM
    assert 0.0 < card.thresholds["bobwhite_covey"] < 1.0
    assert set(card.metrics["cross_site"]) == {"WLFW_AL->WLFW_GA", "WLFW_GA->WLFW_AL"}
    assert "doi:10.1002/rse2.294" in card.training["data"]["paper"]
