"""Outlier ejection (Envoy's outlier detection, consecutive-failure flavour): a backend whose
callers report `consecutive_failures` failures in a row is taken out of rotation for
`base_ejection_s` times the number of its ejections (capped at `max_ejection_s`), as long as no
more than `max_ejection_percent` of the backends (at least one) are out at once. A backend that
stays in rotation for `max_ejection_s` has its count of ejections forgotten."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EjectionSettings:
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: int = 10


@dataclass(slots=True)
class _Record:
    failures: int = 0  # in a row, since the last success
    ejections: int = 0
    ejected_until: float | None = None
    back_since: float | None = None  # when its last ejection ended


class OutlierDetector:
    """Fed each caller's outcome per backend; says who is ejected."""

    def __init__(self, settings: EjectionSettings) -> None:
        self.settings = settings
        self._records: dict[str, _Record] = {}

    def failure(self, backend: str, now: float, backends: int) -> bool:
        """One failure of `backend` (one of `backends`); True when it ejected it just now."""
        record = self._records.setdefault(backend, _Record())
        record.failures += 1
        if record.failures < self.settings.consecutive_failures or self.ejected(backend, now):
            return False
        if len(self.ejected_now(now)) >= self.allowed(backends):
            return False
        s = self.settings
        if record.back_since is not None and now - record.back_since >= s.max_ejection_s:
            record.ejections = 0
        record.ejections += 1
        record.ejected_until = now + min(s.base_ejection_s * record.ejections, s.max_ejection_s)
        record.failures = 0
        return True

    def success(self, backend: str) -> None:
        record = self._records.get(backend)
        if record is not None:
            record.failures = 0

    def ejected(self, backend: str, now: float) -> bool:
        record = self._records.get(backend)
        if record is None or record.ejected_until is None:
            return False
        if now < record.ejected_until:
            return True
        record.ejected_until, record.back_since = None, record.ejected_until
        return False

    def ejected_now(self, now: float) -> list[str]:
        return [backend for backend in self._records if self.ejected(backend, now)]

    def returned_at(self, backend: str) -> float | None:
        """When `backend`'s last ejection ended (it then starts slowly), if it was ejected."""
        record = self._records.get(backend)
        return None if record is None else record.back_since

    def allowed(self, backends: int) -> int:
        """How many of `backends` may be out at once."""
        return max(1, backends * self.settings.max_ejection_percent // 100)

    def forget(self, backend: str) -> None:
        self._records.pop(backend, None)
