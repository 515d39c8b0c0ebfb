"""End to end on synthetic data: train a detector on synthetic calls with pam's own training
loop, then find those calls at the right times in a longer synthetic soundscape."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from pam.io.audio import resample
from pam.detect.checkpoint import load_checkpoint, save_checkpoint
from pam.config import DetectConfig
from pam.detect.detection import run_detection
from pam.io.manifest import scan
from pam.detect.model import Architecture, ModelCard, SpectrogramSettings
from pam.store.store import Store
from pam.train.clips import ClipSet
from pam.train.calibrate import calibrate_thresholds
from pam.train.fit import FitConfig, fit, score_clips
from synth import audiomoth_comment, chirp, noise, tone, write_wav

RATE = 8000
CALL_S = 0.4


def call(rate: int) -> np.ndarray:
    return chirp(CALL_S, rate, f0=1500.0, f1=3000.0, level=0.25)


def distractor(rng: np.random.Generator, rate: int) -> np.ndarray:
    """Sounds that are not the call: steady tones below its band and broadband noise bursts."""
    n = int(CALL_S * rate)
    if rng.random() < 0.6:
        return tone(CALL_S, rate, float(rng.uniform(300, 900)), level=0.2) * np.hanning(n).astype(np.float32)
    return noise(CALL_S, rate, level=0.1, seed=int(rng.integers(1 << 30))) * np.hanning(n).astype(np.float32)


def clip(rng: np.random.Generator, positive: bool, seconds: float = 1.5) -> np.ndarray:
    """Background noise with a call (positives) and one or two distractors (mostly)."""
    x = noise(seconds, RATE, level=0.03, seed=int(rng.integers(1 << 30)))
    sounds = [call(RATE)] if positive else []
    sounds += [distractor(rng, RATE) for _ in range(int(rng.integers(0 if positive else 1, 3)))]
    for sound in sounds:
        at = int(rng.integers(0, len(x) - len(sound)))
        x[at:at + len(sound)] += sound
    return x


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    card = ModelCard(
        name="synthetic-chirp", classes=["chirp"], window_s=1.0,
        spectrogram=SpectrogramSettings(sample_rate=RATE, n_fft=256, hop_length=64, n_mels=32, f_min=100, f_max=4000),
        arch=Architecture(width=8, stages=2),
    )
    labels = np.array([i % 2 == 0 for i in range(384)])
    waves = [clip(rng, bool(p)) for p in labels]
    data = ClipSet(waves=waves, targets=labels[:, None].astype(np.float32), classes=["chirp"], sample_rate=RATE)
    train, val = data.subset(range(0, 320)), data.subset(range(320, 384))
    result = fit(card, train, val, config=FitConfig(epochs=12, batch_size=32, repeats=1, lr=5e-3, patience=6,
                                                    seed=1, progress=False))
    # the threshold is calibrated on the validation clips, as pam's training flow does
    card.thresholds = calibrate_thresholds(val.targets, score_clips(result.net, val, card.window_s), ["chirp"])
    path = tmp_path_factory.mktemp("model") / "chirp.pt"
    save_checkpoint(path, result.net, card)
    return path, result


def test_training_learned_the_call(trained):
    _, result = trained
    assert result.history["val_ap"].max() > 0.95


def test_calls_are_found_at_the_right_times(trained, tmp_path):
    path, _ = trained
    rng = np.random.default_rng(5)
    scape = noise(60.0, RATE, level=0.03, seed=11)
    for at in np.arange(2.0, 58.0, 3.7):  # distractors everywhere
        d = distractor(rng, RATE)
        i = int(at * RATE)
        scape[i:i + len(d)] += d
    calls = [5.3, 17.85, 33.1, 48.6]
    for at in calls:
        i = int(at * RATE)
        scape[i:i + int(CALL_S * RATE)] += call(RATE)
    # Written at 22.05 kHz (band-limited, as a real recorder's signal is): detection resamples.
    rate = 22050
    scape = resample(torch.from_numpy(scape), RATE, rate).numpy()
    t0 = datetime(2024, 6, 1, 5, 0, tzinfo=timezone.utc)
    write_wav(tmp_path / "dump" / "MARSH" / "20240601_050000.WAV", scape, rate,
              comment=audiomoth_comment("05:00:00 01/06/2024"))
    store = Store(tmp_path / "store")
    rows = scan(tmp_path / "dump", store).rows
    # min_score 0 keeps every window's score, so ranking can be checked as well as thresholding
    run_detection(store, rows, load_checkpoint(path), DetectConfig(hop_s=0.5, num_workers=0, min_score=0.0),
                  progress=False)
    det = store.read_detections().sort_values("start_s")
    assert len(det) == 119  # every window of 60 s at 0.5 s hops, 1 s long

    def covers(r, at):  # the window holds most of the call
        return r.start_s <= at + 0.1 and r.end_s >= at + CALL_S - 0.1

    def touches(r, at):
        return r.start_s < at + CALL_S and r.end_s > at

    away = det[[not any(touches(r, at) for at in calls) for r in det.itertuples()]]
    for at in calls:
        hits = [r for r in det.itertuples() if covers(r, at)]
        best = max(hits, key=lambda r: r.score)
        assert best.score >= 0.5, f"the call at {at} s was missed (best window score {best.score:.2f})"
        assert best.score > away["score"].max(), f"the call at {at} s ranks below a window with no call"
        assert best.start_time.to_pydatetime() == t0 + timedelta(seconds=best.start_s)
    # and the calibrated thresholds keep most windows without a call out
    threshold = load_checkpoint(path).card.thresholds["chirp"]
    assert (away["score"] >= threshold).mean() < 0.05
