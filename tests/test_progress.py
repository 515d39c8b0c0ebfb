"""The detection run's progress bar: hours of audio, and the speed in times real time."""

from __future__ import annotations

import io

import pandas as pd

from pam.detect.progress import AudioBar, audio_bar


def test_the_bar_counts_hours_and_states_the_speed_in_times_real_time():
    out = io.StringIO()
    bar = audio_bar(3_600_000, file=out, mininterval=0)  # one hour of audio, in milliseconds
    bar.start_t -= 2.0  # two seconds into the run
    bar.update(1_800_000)
    bar.close()
    last = out.getvalue().strip().split("\r")[-1]
    assert "0.50/1.00 h audio" in last
    speed = float(last.split(", ")[-1].split("x real time")[0].replace(",", ""))
    assert 800 <= speed <= 900, last  # half an hour in about two seconds: about 900x


def test_a_shared_bar_gets_each_change_once_and_a_failure_takes_its_share_back():
    passed: list[int] = []
    bar = AudioBar(pd.Series({0: 10.0, 1: 4.0}), passed.append)
    bar.scored(0, windows=2, hop_s=3.0)   # 6 s of 10
    bar.scored(0, windows=2, hop_s=3.0)   # no change: nothing passed
    bar.finished(0)                        # the rest of its 10 s
    bar.scored(1, windows=1, hop_s=3.0)
    bar.failed(1)                          # its 3 s taken off again
    assert passed == [6000, 4000, 3000, -3000] and sum(passed) == 10_000
