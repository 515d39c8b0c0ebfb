"""Species names: labels as models write them, and the names people ask for.

Broad models such as BirdNET name their classes ``Scientific name_Common Name``
(``Colinus virginianus_Northern Bobwhite``); pam's own models use plain labels
(``bobwhite_covey``). The store keeps the label as written. ``species_name`` splits a label
into its scientific and common name where it has that form, for the report and the Raven
and Audacity exports; ``resolve_species`` turns what a user typed (the label, the
scientific name or the common name, in any letter case) into the labels it means.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class SpeciesName:
    """A label and, for ``Scientific_Common`` labels, its two halves (else ``None``)."""

    label: str
    scientific: str | None = None
    common: str | None = None

    @property
    def display(self) -> str:
        """The name to show people: the common name where there is one, else the label."""
        return self.common or self.label


@functools.lru_cache(maxsize=65536)  # exports name every row; a store holds a few thousand labels at most
def species_name(label: str) -> SpeciesName:
    """Split ``Scientific name_Common Name`` (one ``_``, both halves starting with a capital).

    Any other label (``bobwhite_covey``, ``barred_owl``, ``Noise``) stays whole, with no
    scientific or common name.
    """
    text = str(label)
    parts = text.split("_")
    if len(parts) == 2:
        scientific, common = parts[0].strip(), parts[1].strip()
        if scientific and common and scientific[0].isupper() and common[0].isupper():
            return SpeciesName(text, scientific, common)
    return SpeciesName(text)


def common_name(label: str) -> str:
    """The common name of a ``Scientific_Common`` label; any other label as it is."""
    return species_name(label).display


class UnknownSpecies(ValueError):
    """Species asked for that match no label; the message names the closest known ones."""


def _keys(label: str) -> set[str]:
    name = species_name(label)
    return {k.casefold() for k in (name.label, name.scientific, name.common) if k}


def matching_labels(asked: str, labels: Iterable[str]) -> list[str]:
    """The labels whose label, scientific name or common name is ``asked`` (any letter case)."""
    key = str(asked).strip().casefold()
    return sorted(label for label in set(labels) if key in _keys(label))


def closest_species(asked: str, labels: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` known species nearest to ``asked`` in spelling, as ``Common Name (label)`` or the label."""
    by_key: dict[str, str] = {}
    for label in sorted(set(labels)):
        for key in _keys(label):
            by_key.setdefault(key, label)
    key = str(asked).strip().casefold()
    near = difflib.get_close_matches(key, list(by_key), n=3 * n, cutoff=0.5)
    near += sorted(k for k in by_key if key and key in k and k not in near)  # "bobwhite" finds "northern bobwhite"
    picked = list(dict.fromkeys(by_key[k] for k in near))[:n]
    return [_shown(label) for label in picked]


def _shown(label: str) -> str:
    name = species_name(label)
    return f"{name.common} ({label})" if name.common else label


def resolve_species(asked: Sequence[str], labels: Iterable[str]) -> tuple[list[str], list[str]]:
    """The labels that ``asked`` names (each by label, scientific or common name, any case), and
    the names that match none of ``labels``."""
    labels = set(labels)
    found: list[str] = []
    missing: list[str] = []
    for name in asked:
        hits = matching_labels(name, labels)
        if hits:
            found += [h for h in hits if h not in found]
        else:
            missing.append(name)
    return found, missing


def unknown_species_message(missing: Sequence[str], labels: Iterable[str]) -> str:
    """One line: the species not found, and the closest known ones."""
    labels = set(labels)
    parts = []
    for name in missing:
        near = closest_species(name, labels)
        if near:
            parts.append(f"{name!r} (closest: {', '.join(near)})")
        elif len(labels) <= 10:  # nothing alike, and few enough to name them all
            parts.append(f"{name!r} (known: {', '.join(_shown(label) for label in sorted(labels))})")
        else:
            parts.append(f"{name!r}")
    return (f"unknown species {'; '.join(parts)}: no detections in the store have that label, scientific or "
            f"common name ({len(labels)} species {'has' if len(labels) == 1 else 'have'} detections; `pam sql STORE \"SELECT DISTINCT label FROM "
            "detections\"` lists them)")
