"""CADDY: high-availability clustering for Python (Raft, SWIM, failover, balancing, fencing)."""

__version__ = "0.1.0"
