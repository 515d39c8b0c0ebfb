import numpy as np
import pytest

from pam.detect.windows import to_samples, window_count, window_grid


def brute_force(frames: int, rate: int, window_s: float, hop_s: float) -> list[int]:
    """The rule, spelled out: start k*hop while inside the file and the last window has not
    reached the end."""
    win = round(window_s * rate)
    starts: list[int] = []
    k = 0
    while True:
        s = round(k * hop_s * rate)
        if s >= frames or (starts and starts[-1] + win >= frames):
            return starts
        starts.append(s)
        k += 1


@pytest.mark.parametrize(
    "frames, expected",
    [
        (10, [0, 2, 4, 6]),  # last window ends exactly at the end
        (11, [0, 2, 4, 6, 8]),  # one more, padded by 1
        (3, [0]),  # shorter than a window: one padded window
        (4, [0]),
        (5, [0, 2]),
    ],
)
def test_positions_small_cases(frames, expected):
    assert window_grid(frames, 1, 4.0, 2.0).starts.tolist() == expected


def test_hop_larger_than_window_leaves_gaps():
    grid = window_grid(100, 10, 2.0, 3.0)  # 10 s, windows of 2 s every 3 s
    assert grid.starts.tolist() == [0, 30, 60, 90]
    assert grid.window == 20
    assert grid.end_seconds().tolist() == [2.0, 5.0, 8.0, 11.0]  # last one padded past 10 s


def test_empty_file_has_no_windows():
    assert window_count(0, 48000, 3.0, 1.5) == 0


def test_defaults_on_a_real_length():
    # 60 s at 48 kHz, 3 s windows every 1.5 s: starts at 0, 1.5, ..., 57 s -> 39 windows
    grid = window_grid(60 * 48000, 48000, 3.0, 1.5)
    assert len(grid) == 39
    assert grid.starts[-1] == 57 * 48000
    assert np.all(np.diff(grid.starts) == 72000)


def test_sample_exact_offsets_with_fractional_hops():
    # 22.05 kHz and a hop of 1.5 s: 33075 samples exactly; 0.1 s hop at 22050 = 2205.
    grid = window_grid(22050 * 10, 22050, 3.0, 1.5)
    assert grid.starts.tolist() == [k * 33075 for k in range(len(grid))]
    # A hop that is not a whole number of samples: each start is rounded, never drifts.
    grid = window_grid(44100, 44100, 0.5, 1 / 3)
    assert grid.starts.tolist() == [0, 14700, 29400]


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000])
@pytest.mark.parametrize("window_s, hop_s", [(3.0, 1.5), (3.0, 3.0), (3.0, 5.0), (1.0, 0.25), (5.0, 1.2)])
def test_matches_the_rule_for_many_lengths(rate, window_s, hop_s):
    rng = np.random.default_rng(rate)
    for frames in [1, rate - 1, rate, 3 * rate, 3 * rate + 1, *rng.integers(1, 40 * rate, 5).tolist()]:
        got = window_grid(int(frames), rate, window_s, hop_s).starts.tolist()
        assert got == brute_force(int(frames), rate, window_s, hop_s), frames


def test_every_sample_is_covered_when_hop_not_larger_than_window():
    frames, rate = 12345, 1000
    grid = window_grid(frames, rate, 3.0, 1.5)
    covered = np.zeros(frames, dtype=bool)
    for s in grid.starts:
        covered[s : s + grid.window] = True
    assert covered.all()


def test_24_hours_is_cheap():
    grid = window_grid(24 * 3600 * 48000, 48000, 3.0, 1.5)
    assert len(grid) == 57599


@pytest.mark.parametrize("bad", [0.0, -1.0, 1e-9])
def test_rejects_nonsense_durations(bad):
    with pytest.raises(ValueError):
        to_samples(bad, 16000)
