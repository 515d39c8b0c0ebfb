"""Sunrise and sunset from the NOAA solar equations (no network, no ephemeris files).

The equations are those of NOAA's Global Monitoring Laboratory solar calculator (after Meeus,
*Astronomical Algorithms*): the sun's declination and the equation of time from the Julian
century, and the hour angle at which the sun's centre is 0.833 degrees below the horizon
(refraction plus the sun's radius). They agree with published almanac times to about a
minute between the polar circles; closer to the poles the day of the first and last
sunrise is uncertain by a day or so.

Times are hours after 00:00 UTC of the given date, for the local solar day of that date at
the longitude (so at 150 E the sunrise of 21 June is about -3 h, i.e. 21:00 UTC on 20 June).
Days without a sunrise (polar day or night) give NaN.
"""

from __future__ import annotations

import numpy as np

_ZENITH_DEG = 90.833  # refraction (34') and the sun's semi-diameter (16')
_J2000 = 2451545.0  # Julian day of 2000-01-01 12:00 UTC
_UNIX_EPOCH_JD = 2440587.5  # Julian day of 1970-01-01 00:00 UTC


def _declination_and_eot(jd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sun's declination (radians) and the equation of time (minutes) at Julian days ``jd``."""
    t = (jd - _J2000) / 36525.0
    l0 = np.radians(np.mod(280.46646 + t * (36000.76983 + t * 0.0003032), 360.0))
    m = np.radians(357.52911 + t * (35999.05029 - 0.0001537 * t))
    e = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    centre = (np.sin(m) * (1.914602 - t * (0.004817 + 0.000014 * t)) + np.sin(2 * m) * (0.019993 - 0.000101 * t)
              + np.sin(3 * m) * 0.000289)
    omega = np.radians(125.04 - 1934.136 * t)
    apparent_long = np.radians(np.degrees(l0) + centre - 0.00569 - 0.00478 * np.sin(omega))
    seconds = 21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))
    obliquity = np.radians(23.0 + (26.0 + seconds / 60.0) / 60.0 + 0.00256 * np.cos(omega))
    declination = np.arcsin(np.sin(obliquity) * np.sin(apparent_long))
    y = np.tan(obliquity / 2.0) ** 2
    eot = 4.0 * np.degrees(y * np.sin(2 * l0) - 2 * e * np.sin(m) + 4 * e * y * np.sin(m) * np.cos(2 * l0)
                           - 0.5 * y * y * np.sin(4 * l0) - 1.25 * e * e * np.sin(2 * m))
    return declination, eot


def _event_utc_h(days: np.ndarray, lat: np.ndarray, lon: np.ndarray, sign: float) -> np.ndarray:
    """Sunrise (sign -1) or sunset (sign +1), hours after 00:00 UTC of ``days``.

    The first pass takes the sun's position at local solar noon, the second at the time the
    first pass found (as the NOAA calculator evaluates it at the event itself).
    """
    noon = 720.0 - 4.0 * lon  # minutes after 00:00 UTC, before the equation of time
    minutes = noon
    phi = np.radians(lat)
    for _pass in range(2):
        declination, eot = _declination_and_eot(_UNIX_EPOCH_JD + days + np.nan_to_num(minutes, nan=0.0) / 1440.0)
        cos_h = np.cos(np.radians(_ZENITH_DEG)) / (np.cos(phi) * np.cos(declination)) - np.tan(phi) * np.tan(declination)
        hour_angle = np.degrees(np.arccos(np.where(np.abs(cos_h) <= 1.0, cos_h, np.nan)))
        minutes = np.where(np.isnan(minutes), np.nan, noon - eot + sign * 4.0 * hour_angle)
    return minutes / 60.0


def _arrays(days, lat, lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    days, lat, lon = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (days, lat, lon)))
    return days, lat, lon


def sunrise_utc_h(days, lat, lon) -> np.ndarray:
    """Sunrise in hours after 00:00 UTC of each date (days since 1970-01-01); NaN without one.

    ``lat`` in degrees north, ``lon`` in degrees east (west negative); scalars or arrays.
    """
    return _event_utc_h(*_arrays(days, lat, lon), sign=-1.0)


def sunset_utc_h(days, lat, lon) -> np.ndarray:
    """Sunset in hours after 00:00 UTC of each date; NaN without one (see ``sunrise_utc_h``)."""
    return _event_utc_h(*_arrays(days, lat, lon), sign=+1.0)
