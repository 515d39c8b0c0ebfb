"""The training loop on synthetic chirp-vs-noise clips: learns, stops early, scores like detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pam.detect.model import Architecture, ModelCard, SpectrogramSettings
from pam.train.clips import ClipSet
from pam.train.fit import FitConfig, _draws, clip_windows, fit, score_clips
from pam.train.metrics import average_precision
from pam.train.training_state import ResumeError
from pam.detect.windows import window_grid

RATE = 8000
SPEC = SpectrogramSettings(sample_rate=RATE, n_fft=256, hop_length=128, n_mels=32, f_min=50.0, f_max=4000.0)
ARCH = Architecture(width=4, stages=2, blocks_per_stage=1, dropout=0.0)
CARD = ModelCard(name="tiny", classes=["chirp"], window_s=0.5, spectrogram=SPEC, arch=ARCH)


def make_clips(n: int, seed: int, seconds: float = 0.75) -> ClipSet:
    """Half the clips hold a 0.2 s up-sweep at 0.25-0.45 s (inside every 0.5 s crop); all hold noise."""
    rng = np.random.default_rng(seed)
    waves, targets = [], []
    t = np.arange(int(0.2 * RATE)) / RATE
    for i in range(n):
        x = (rng.normal(0, 0.05, int(seconds * RATE)) * rng.uniform(0.5, 2.0)).astype(np.float32)
        positive = i % 2 == 0
        if positive:
            f0 = rng.uniform(900, 1300)
            sweep = 0.1 * np.sin(2 * np.pi * (f0 * t + 3000 * t**2)) * np.hanning(len(t))
            at = int(0.25 * RATE)
            x[at:at + len(t)] += sweep.astype(np.float32)
        waves.append(x)
        targets.append([1.0 if positive else 0.0])
    return ClipSet(waves=waves, targets=np.array(targets, dtype=np.float32), classes=["chirp"], sample_rate=RATE)


def quick(**kw) -> FitConfig:
    base = dict(epochs=8, batch_size=16, repeats=2, lr=1e-2, patience=50, hop_s=0.25,
                device="cpu", progress=False, seed=0)
    base.update(kw)
    return FitConfig(**base)


def test_tiny_fit_separates_chirps_from_noise() -> None:
    train, val, test = make_clips(32, 1), make_clips(16, 2), make_clips(40, 3)
    res = fit(CARD, train, val, backgrounds=train.negatives(), config=quick(overlay_p=0.5, snr_db=(5.0, 20.0)))
    scores = score_clips(res.net, test, CARD.window_s, hop_s=0.25)
    assert scores.shape == (40, 1)
    assert average_precision(test.targets[:, 0], scores[:, 0]) >= 0.95
    hist = res.history
    assert list(hist.columns) == ["epoch", "train_loss", "train_ap", "val_loss", "val_ap", "lr", "seconds"]
    assert len(hist) == 8 and hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert res.best_epoch == int(hist["val_loss"].idxmin()) + 1


def test_early_stopping_when_validation_loss_rises_keeps_the_best_state() -> None:
    train = make_clips(32, 1)
    val = make_clips(16, 2)
    val.targets = 1.0 - val.targets  # validation says the opposite: learning the task makes it worse
    res = fit(CARD, train, val, config=quick(epochs=30, patience=2, ema_decay=0.0))
    hist = res.history
    assert res.stopped_early
    assert len(hist) == res.best_epoch + 2 < 30  # two epochs without improvement, then stop
    # The returned weights are the best epoch's, not the last one's.
    logit = score_clips(res.net, val, CARD.window_s, hop_s=0.25, logits=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logit), torch.from_numpy(val.targets))
    assert float(loss) == pytest.approx(hist["val_loss"].min(), rel=1e-4)
    assert hist["val_loss"].iloc[-1] > hist["val_loss"].min()


def test_min_epochs_delays_what_early_stopping_may_keep() -> None:
    train, val = make_clips(16, 1), make_clips(8, 2)
    val.targets = 1.0 - val.targets
    res = fit(CARD, train, val, config=quick(epochs=30, batch_size=8, patience=2, min_epochs=4))
    assert res.best_epoch >= 4 and len(res.history) == res.best_epoch + 2


def test_fit_is_seeded() -> None:
    train, val = make_clips(16, 1), make_clips(8, 2)
    cfg = quick(epochs=2, batch_size=8, overlay_p=0.5, mix_p=0.5, ema_decay=0.9)
    a = fit(CARD, train, val, backgrounds=train.negatives(), config=cfg)
    b = fit(CARD, train, val, backgrounds=train.negatives(), config=cfg)
    np.testing.assert_array_equal(a.history["train_loss"], b.history["train_loss"])
    np.testing.assert_array_equal(a.history["val_loss"], b.history["val_loss"])


def test_score_clips_is_the_max_over_detection_windows() -> None:
    torch.manual_seed(0)
    net = CARD.build().eval()
    waves = [np.random.default_rng(s).normal(0, 0.1, n).astype(np.float32) for s, n in [(0, 6000), (1, 9100), (2, 3000)]]
    got = score_clips(net, waves, CARD.window_s, RATE, hop_s=0.25)
    for wave, row in zip(waves, got):
        grid = window_grid(len(wave), RATE, 0.5, 0.25)
        padded = np.pad(wave, (0, int(grid.starts[-1]) + grid.window - len(wave)))
        windows = torch.from_numpy(np.stack([padded[s:s + grid.window] for s in grid.starts]))
        with torch.no_grad():
            expected = torch.sigmoid(net(windows)).max(dim=0).values.numpy()
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)
    assert len(clip_windows(waves[2], RATE, 0.5, 0.25)) == 1  # shorter than a window: one, padded
    with pytest.raises(ValueError):
        score_clips(net, waves, CARD.window_s, 16000)  # wrong rate for this model


def test_fit_rejects_mismatched_clips() -> None:
    other = make_clips(4, 0)
    other.classes = ["other"]
    with pytest.raises(ValueError, match="classes"):
        fit(CARD, other, config=quick(epochs=1))
    with pytest.raises(ValueError, match="background"):
        fit(CARD, make_clips(4, 0), config=quick(epochs=1, overlay_p=0.5))
    assert not math.isnan(quick().lr)


def test_resumed_run_continues_from_its_last_epoch_and_ends_as_an_uninterrupted_one(tmp_path) -> None:
    train, val = make_clips(16, 1), make_clips(8, 2)
    cfg = quick(epochs=4, batch_size=8, overlay_p=0.5, mix_p=0.3, ema_decay=0.9, spec_time_masks=1,
                spec_freq_masks=1, spec_time_width=4, spec_freq_width=3)
    whole = fit(CARD, train, val, backgrounds=train.negatives(), config=cfg)

    class Crash(RuntimeError):
        pass

    def crash_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise Crash("power cut")

    with pytest.raises(Crash):
        fit(CARD, train, val, backgrounds=train.negatives(), config=cfg, state_dir=tmp_path, on_epoch=crash_after_two)
    seen: list[int] = []
    resumed = fit(CARD, train, val, backgrounds=train.negatives(), config=cfg, state_dir=tmp_path,
                  on_epoch=lambda row: seen.append(row["epoch"]))
    assert resumed.resumed_from == 2 and seen == [3, 4]  # only the missing epochs were trained
    for col in ("train_loss", "val_loss", "val_ap"):
        np.testing.assert_array_equal(resumed.history[col], whole.history[col])
    for (k, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), k
    # A finished run folder is not trained again, and other settings are refused.
    again = fit(CARD, train, val, backgrounds=train.negatives(), config=cfg, state_dir=tmp_path)
    assert again.resumed_from == 4 and len(again.history) == 4
    with pytest.raises(ResumeError, match="other data or settings"):
        fit(CARD, train, val, backgrounds=train.negatives(), config=quick(epochs=4, lr=0.5), state_dir=tmp_path)


def test_keep_last_runs_every_epoch_and_keeps_the_average() -> None:
    train, val = make_clips(8, 1), make_clips(4, 2)
    val.targets = 1.0 - val.targets  # validation loss rises: early stopping would stop, 'last' must not
    res = fit(CARD, train, val, config=quick(epochs=4, batch_size=8, repeats=1, patience=1, keep="last",
                                             ema_decay=0.9))
    assert len(res.history) == 4 and not res.stopped_early and res.best_epoch == 4


def test_balanced_draws_equalise_label_combinations() -> None:
    targets = np.array([[1.0]] * 2 + [[0.0]] * 8, dtype=np.float32)
    draws = _draws(targets, 200, True, np.random.default_rng(0))
    share = float(np.isin(draws, [0, 1]).mean())
    assert 0.45 < share < 0.55  # 2 positives drawn as often as 8 negatives
    plain = _draws(targets, 3, False, np.random.default_rng(0))
    assert sorted(plain.tolist()) == sorted(list(range(10)) * 3)
