"""Sunrise and sunset against published almanac times (local clock, to the minute)."""

from datetime import date

import numpy as np
import pytest

from pam.analysis.solar import sunrise_utc_h, sunset_utc_h

MINUTE_H = 1 / 60


def day(iso: str) -> int:
    return (date.fromisoformat(iso) - date(1970, 1, 1)).days


def hm(h: int, m: int) -> float:
    return h + m / 60


# (place, date, lat, lon, UTC offset of the local clock, sunrise, sunset), published local times
ALMANAC = [
    ("London, summer solstice", "2024-06-21", 51.5074, -0.1278, 1, hm(4, 43), hm(21, 21)),
    ("London, winter solstice", "2024-12-21", 51.5074, -0.1278, 0, hm(8, 4), hm(15, 53)),
    ("Sydney, winter solstice", "2024-06-21", -33.8688, 151.2093, 10, hm(7, 0), hm(16, 54)),
    ("New York, summer solstice", "2024-06-20", 40.7128, -74.0060, -4, hm(5, 25), hm(20, 31)),
    ("Reykjavik, summer solstice", "2024-06-21", 64.1466, -21.9426, 0, hm(2, 55), hm(24, 4)),
]


@pytest.mark.parametrize("place,iso,lat,lon,offset,rise,set_", ALMANAC, ids=[a[0] for a in ALMANAC])
def test_sunrise_and_sunset_match_the_almanac(place, iso, lat, lon, offset, rise, set_):
    # published times are rounded to the minute: allow that and half a minute more
    assert float(sunrise_utc_h(day(iso), lat, lon)) + offset == pytest.approx(rise, abs=1.5 * MINUTE_H)
    assert float(sunset_utc_h(day(iso), lat, lon)) + offset == pytest.approx(set_, abs=1.5 * MINUTE_H)


def test_far_east_sunrise_falls_on_the_previous_utc_day():
    # Sydney's 07:00 AEST sunrise of 21 June is 21:00 UTC on 20 June: -3 h after 00:00 UTC of the 21st
    assert float(sunrise_utc_h(day("2024-06-21"), -33.8688, 151.2093)) == pytest.approx(-3.0, abs=1.5 * MINUTE_H)


def test_equinox_day_at_the_equator_is_a_little_over_twelve_hours():
    # refraction and the sun's radius lengthen the day by about 7 minutes; noon is 12:00 minus the
    # equation of time (about -7.5 min on 20 March), at longitude 0
    rise, set_ = float(sunrise_utc_h(day("2024-03-20"), 0.0, 0.0)), float(sunset_utc_h(day("2024-03-20"), 0.0, 0.0))
    assert set_ - rise == pytest.approx(12 + 7 / 60, abs=1.5 * MINUTE_H)
    assert (rise + set_) / 2 == pytest.approx(12 + 7.5 / 60, abs=1.0 * MINUTE_H)


def test_polar_day_and_night_have_no_sunrise():
    tromso = (69.65, 18.96)
    assert np.isnan(sunrise_utc_h(day("2024-06-21"), *tromso))  # midnight sun
    assert np.isnan(sunrise_utc_h(day("2024-12-21"), *tromso))  # polar night
    assert np.isnan(sunset_utc_h(day("2024-12-21"), *tromso))


def test_arrays_of_days_and_sites():
    days = np.array([day("2024-06-21"), day("2024-12-21")])
    rises = sunrise_utc_h(days, np.array([51.5074, 51.5074]), -0.1278)
    assert rises.shape == (2,)
    assert rises[0] == pytest.approx(hm(3, 43), abs=1.5 * MINUTE_H) and rises[1] == pytest.approx(hm(8, 4), abs=1.5 * MINUTE_H)
