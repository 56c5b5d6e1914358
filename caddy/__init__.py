"""CADDY: high-availability clustering for Python: Raft consensus, a replicated key-value store,
SWIM membership."""

__version__ = "0.1.0"
