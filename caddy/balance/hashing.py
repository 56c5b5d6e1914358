"""Consistent choice of a backend for a key (`ip_hash`): weighted rendezvous hashing (Thaler and
Ravishankar, "Using name-based mappings to increase hit rates", 1998; the weighted form of
Schindelhauer and Schomaker, 2005). Each backend scores the key and the best score wins, so
removing one of N backends moves only the keys it held (~1/N), and adding it back returns
exactly those: never `hash % N`, which moves almost every key."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

_SCALE = float(1 << 64)


def score(key: str, backend: str, weight: float) -> float:
    """-weight / ln(u) for a uniform u in (0, 1) drawn from the pair: a larger weight wins more
    keys, in proportion."""
    digest = hashlib.blake2b(f"{backend}\0{key}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / _SCALE
    return -weight / math.log(unit)


def rendezvous(key: str, backends: Iterable[tuple[str, float]]) -> str | None:
    """The backend of (id, weight) pairs that `key` maps to; None when there are none."""
    best, best_score = None, -1.0
    for backend, weight in backends:
        found = score(key, backend, weight)
        if found > best_score or (found == best_score and best is not None and backend < best):
            best, best_score = backend, found
    return best
