from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import soundfile as sf

from pam.io import recorders

UTC = timezone.utc


@pytest.mark.parametrize(
    "name, expected",
    [
        ("20240501_023000.WAV", datetime(2024, 5, 1, 2, 30, tzinfo=UTC)),
        ("20191231_235959.wav", datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("5A3C2B1D.WAV", datetime.fromtimestamp(0x5A3C2B1D, tz=UTC)),
    ],
)
def test_audiomoth_filenames_are_utc(name, expected):
    info = recorders.parse_filename(f"/dump/site/{name}")
    assert info.recorder == "audiomoth"
    assert info.start_time == expected
    assert info.start_time.tzinfo is not None
    assert info.time_source == "filename"


def test_songmeter_filename_prefix_and_local_time():
    info = recorders.parse_filename("/d/S4A03895_20190522_153000.wav", local_tz=ZoneInfo("America/Bogota"))
    assert info.recorder == "songmeter"
    assert info.prefix == "S4A03895"
    assert info.device == "S4A03895"
    # 15:30 in Bogota (UTC-5) is 20:30 UTC
    assert info.start_time == datetime(2019, 5, 22, 20, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "stem, prefix",
    [
        ("SMA00380_20200101_000000", "SMA00380"),
        ("NORTH_FIELD_2_20200101_000000", "NORTH_FIELD_2"),
        ("SM4BAT_0+1_20200101_000000", "SM4BAT"),
    ],
)
def test_songmeter_prefix_variants(stem, prefix):
    info = recorders.parse_filename(stem + ".wav")
    assert info.prefix == prefix
    assert info.start_time == datetime(2020, 1, 1, tzinfo=UTC)


def test_songmeter_without_site_timezone_is_read_as_utc():
    info = recorders.parse_filename("X_20200101_120000.wav")
    assert info.start_time == datetime(2020, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize("name", ["recording.wav", "20241301_000000.WAV", "20240101_256000.wav", "ABC_2024_01.wav"])
def test_unparseable_names_give_no_time(name):
    info = recorders.parse_filename(name)
    assert info.start_time is None
    assert info.time_source == "none"


def test_audiomoth_comment_utc():
    start, device = recorders.parse_audiomoth_comment(
        "Recorded at 10:25:00 04/04/2020 (UTC) by AudioMoth 24526B065D325963 at gain setting 2 "
        "while battery state was 4.7V."
    )
    assert start == datetime(2020, 4, 4, 10, 25, tzinfo=UTC)
    assert device == "24526B065D325963"


@pytest.mark.parametrize(
    "offset, utc_hour, utc_minute",
    [("+2", 8, 25), ("-5", 15, 25), ("+05:30", 4, 55), ("-03:30", 13, 55)],
)
def test_audiomoth_comment_with_offset_converts_to_utc(offset, utc_hour, utc_minute):
    start, _ = recorders.parse_audiomoth_comment(
        f"Recorded at 10:25:00 04/04/2020 (UTC{offset}) by AudioMoth 24526B065D325963 at medium gain"
    )
    assert start == datetime(2020, 4, 4, utc_hour, utc_minute, tzinfo=UTC)


def test_comment_wins_over_filename_and_gives_device():
    info = recorders.identify(
        "/d/A/20200404_000000.WAV",
        comment="Recorded at 10:25:00 04/04/2020 (UTC+1) by AudioMoth 0FE081F80FE081F0 at gain setting 2",
    )
    assert info.time_source == "comment"
    assert info.start_time == datetime(2020, 4, 4, 9, 25, tzinfo=UTC)
    assert info.device == "0FE081F80FE081F0"
    assert info.recorder == "audiomoth"


def test_comment_with_fractional_seconds():
    start, _ = recorders.parse_audiomoth_comment("Recorded at 10:00:00.500 28/05/2024 (UTC) by AudioMoth 243B1F026488F56E")
    assert start == datetime(2024, 5, 28, 10, 0, 0, 500000, tzinfo=UTC)


def test_device_from_artist_when_comment_is_missing():
    info = recorders.identify("/d/A/20200404_000000.WAV", comment="", artist="AudioMoth 24526b065d325963")
    assert info.device == "24526B065D325963"
    assert info.time_source == "filename"


@pytest.mark.realdata
def test_real_audiomoth_headers(shared_data):
    """Real AudioMoth files as they come off the card (OpenSoundscape test data)."""
    folder = shared_data / "field" / "opensoundscape"
    with sf.SoundFile(folder / "metadata.wav") as f:
        info = recorders.identify(folder / "metadata.wav", f.comment, f.artist)
    assert info.start_time == datetime(2020, 4, 4, 10, 25, tzinfo=UTC)
    assert info.device == "24526B065D325963"
    with sf.SoundFile(folder / "1min.wav") as f:
        info = recorders.identify(folder / "1min.wav", f.comment, f.artist)
    assert info.start_time == datetime(2018, 5, 4, 9, 32, tzinfo=UTC)
    assert info.device == "0FE081F80FE081F0"


@pytest.mark.realdata
def test_real_songmeter_card(shared_data):
    """96 real SM4 files named PREFIX_YYYYMMDD_HHMMSS, one every 15 minutes (scikit-maad)."""
    files = sorted((shared_data / "field" / "scikit-maad" / "S4A03895").glob("*.wav"))
    assert len(files) == 96
    starts = [recorders.parse_filename(f).start_time for f in files]
    assert starts[0] == datetime(2019, 5, 22, 0, 0, tzinfo=UTC)
    assert all(b - a == timedelta(minutes=15) for a, b in zip(starts, starts[1:]))
    assert {recorders.parse_filename(f).prefix for f in files} == {"S4A03895"}
