"""Near-duplicates found fast: the perceptual hash and the index of looks (numpy).

A :class:`LookIndex` finds the looks of the same picture (``looks.Look.distance``)
without comparing against every recorded one: multi-index hashing. The 64 bits are cut
into four 16-bit bands; two hashes at most 12 bits apart agree to within 3 bits on at
least one band, so only the entries whose band is within 3 bits of the query's are
compared (697 buckets a band, looked up in one vectorised step for many queries at
once).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .looks import COLOUR_BYTES, MAX_COLOUR_DIFFERENCE, MAX_SHAPE_DISTANCE, Look

_DCT_SIDE: Final = 32
_DCT_MATRIX: Final = 2 * np.cos(
    np.pi * np.outer(np.arange(_DCT_SIDE), 2 * np.arange(_DCT_SIDE) + 1) / (2 * _DCT_SIDE)
)
"""The unnormalised DCT-II of SciPy's ``fftpack.dct``, as a matrix."""
_BANDS: Final = 4
_BAND_BITS: Final = 16
_BAND_MASK: Final = np.uint64((1 << _BAND_BITS) - 1)
_PROBES: Final = np.array(
    [
        sum(1 << bit for bit in flipped)
        for flips in range(MAX_SHAPE_DISTANCE // _BANDS + 1)
        for flipped in itertools.combinations(range(_BAND_BITS), flips)
    ],
    dtype=np.int32,
)
_QUERY_BLOCK: Final = 256

R = TypeVar("R")


def perceptual_hash(image: Image.Image) -> int:
    """ImageHash's ``phash`` (hash_size 8) as a 64-bit integer, first bit highest.

    The same steps (grey, 32x32 LANCZOS, a DCT-II along each axis, the 8x8 lowest
    frequencies against their median), with the DCT as two products with its matrix
    instead of SciPy's FFT: a process then never imports SciPy, 0.2 s of CPU before its
    first photo. Coefficients are rounded to 1e-6 first, so that a flat picture, whose
    frequencies are all zero, hashes the same however the rounding of its arithmetic
    falls. ``tests/test_near_duplicates.py`` checks the two agree on real photos.
    """
    grey = image.convert("L").resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    frequencies = np.round(_DCT_MATRIX @ pixels @ _DCT_MATRIX.T, 6)[:8, :8]
    bits = (frequencies > np.median(frequencies)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@dataclass(frozen=True)
class Match(Generic[R]):
    """The earlier photo a look matched, and how many bits apart their shapes are."""

    ref: R
    distance: int


class LookIndex(Generic[R]):
    """Looks with a reference each (a ledger key, a photo), searchable by likeness."""

    def __init__(self, entries: Iterable[tuple[Look, R]] = ()) -> None:
        looks, self.refs = [], []
        for look, ref in entries:
            looks.append(look)
            self.refs.append(ref)
        self._shapes, self._colours = _arrays(looks)
        self._bands = [self._band_table(band) for band in range(_BANDS)]

    def _band_table(
        self, band: int
    ) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.int32]]:
        values = _band(self._shapes, band)
        order = np.argsort(values, kind="stable").astype(np.int32)
        counts = np.bincount(values, minlength=1 << _BAND_BITS).astype(np.int32)
        return order, counts, np.cumsum(counts, dtype=np.int32) - counts

    def matches(self, looks: Sequence[Look]) -> list[list[Match[R]]]:
        """For each look, every entry of the same picture, closest first (of equals, the
        first added)."""
        found: list[list[tuple[int, int]]] = [[] for _ in looks]
        for query, entry, distance in self.pairs(looks):
            found[query].append((distance, entry))
        return [
            [Match(self.refs[entry], distance) for distance, entry in sorted(entries)]
            for entries in found
        ]

    def pairs(self, looks: Sequence[Look]) -> list[tuple[int, int, int]]:
        """Every (look's position, entry's position, distance) of the same picture."""
        if not looks or not self.refs:
            return []
        shapes, colours = _arrays(looks)
        found: set[tuple[int, int, int]] = set()
        for low in range(0, len(looks), _QUERY_BLOCK):
            queries, entries = self._candidates(shapes[low : low + _QUERY_BLOCK])
            queries += low
            bits = np.bitwise_count(shapes[queries] ^ self._shapes[entries]).astype(np.int64)
            close = bits <= MAX_SHAPE_DISTANCE
            queries, entries, bits = queries[close], entries[close], bits[close]
            same = _alike_colours(colours[queries], self._colours[entries])
            found.update(
                zip(
                    queries[same].tolist(),
                    entries[same].tolist(),
                    bits[same].tolist(),
                    strict=True,
                )
            )
        return sorted(found)

    def _candidates(
        self, shapes: NDArray[np.uint64]
    ) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
        """(query, entry) positions agreeing within 3 bits on some band (with repeats)."""
        queries, entries = [], []
        asker = np.repeat(np.arange(len(shapes), dtype=np.int32), len(_PROBES))
        for band, (order, counts, starts) in enumerate(self._bands):
            probes = (_band(shapes, band)[:, None] ^ _PROBES[None, :]).ravel()
            sizes, firsts = counts[probes], starts[probes]
            ends = np.cumsum(sizes, dtype=np.int32)
            shift = np.repeat(firsts - (ends - sizes), sizes)
            entries.append(order[shift + np.arange(len(shift), dtype=np.int32)])
            queries.append(np.repeat(asker, sizes))
        return np.concatenate(queries), np.concatenate(entries)


def _band(shapes: NDArray[np.uint64], band: int) -> NDArray[np.int32]:
    return ((shapes >> np.uint64(band * _BAND_BITS)) & _BAND_MASK).astype(np.int32)


_Looks = tuple[NDArray[np.uint64], NDArray[np.uint8]]
"""Shapes, and colours a row each: looks in numpy's terms."""


def _arrays(looks: Sequence[Look]) -> _Looks:
    shapes = np.array([look.shape for look in looks], dtype=np.uint64)
    colours = np.frombuffer(b"".join(look.colours for look in looks), np.uint8)
    return shapes, colours.reshape(len(looks), COLOUR_BYTES)


def _alike_colours(these: NDArray[np.uint8], those: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Row by row (``Look.distance``'s colour rule, for many at once): whether no cell's
    channel differs by more than ``MAX_COLOUR_DIFFERENCE``."""
    difference = np.abs(these.astype(np.int16) - those.astype(np.int16))
    alike: NDArray[np.bool_] = difference.max(axis=1, initial=0) <= MAX_COLOUR_DIFFERENCE
    return alike


class NearDuplicates(Generic[R]):
    """A run's planning: each look is checked against what is recorded (paid for) and
    against what this run planned before it, then planned itself if it is new."""

    def __init__(self, recorded: LookIndex[R]) -> None:
        self.recorded = recorded
        self._planned: list[R] = []
        self._shapes = np.empty(64, dtype=np.uint64)
        self._colours = np.empty((64, COLOUR_BYTES), dtype=np.uint8)

    def check(
        self,
        entries: Sequence[tuple[Look, R]],
        confirm: Callable[[R, R], bool] | None = None,
        takes_over: Callable[[R, Match[R]], bool] | None = None,
    ) -> list[Match[R] | None]:
        """In order, for each (look, ref): the recorded or planned picture it repeats, or
        None, and then it is planned (``ref`` is what a later repeat names).

        A look's matches, recorded first and each by distance, are only candidates when
        ``confirm`` is given: the first that ``confirm(ref, its ref)`` accepts is the one
        repeated (two products shot alike share a look). A planned picture repeated is
        replaced by ``ref`` where ``takes_over(ref, match)`` says so (a better copy of it):
        ``ref`` is then planned in its place and its entry is None."""
        recorded = self.recorded.matches([look for look, _ in entries])
        result: list[Match[R] | None] = []
        for (look, ref), paid in zip(entries, recorded, strict=True):
            planned = self._planned_matches(look)
            candidates = itertools.chain(paid, planned)
            match = next((m for m in candidates if confirm is None or confirm(ref, m.ref)), None)
            if (
                match is not None
                and takes_over is not None
                and any(match is other for other in planned)
                and takes_over(ref, match)
            ):
                self._planned = [ref if other is match.ref else other for other in self._planned]
                match = None
            if match is None:
                self.plan(look, ref)
            result.append(match)
        return result

    def _planned_matches(self, look: Look) -> list[Match[R]]:
        # A scan of this run's own planned photos: they are few next to what is recorded.
        count = len(self._planned)
        bits = np.bitwise_count(self._shapes[:count] ^ np.uint64(look.shape)).astype(np.int64)
        close = np.flatnonzero(bits <= MAX_SHAPE_DISTANCE)
        if not len(close):
            return []
        colours = np.frombuffer(look.colours, np.uint8)[None, :]
        same = close[_alike_colours(self._colours[close], colours)]
        ordered = same[np.argsort(bits[same], kind="stable")]
        return [Match(self._planned[i], int(bits[i])) for i in ordered.tolist()]

    def plan(self, look: Look, ref: R) -> None:
        """Count ``look`` as planned in this run: a later look like it repeats ``ref``."""
        count = len(self._planned)
        if count == len(self._shapes):
            self._shapes = np.resize(self._shapes, 2 * count)
            self._colours = np.resize(self._colours, (2 * count, COLOUR_BYTES))
        self._shapes[count] = look.shape
        self._colours[count] = np.frombuffer(look.colours, np.uint8)
        self._planned.append(ref)
