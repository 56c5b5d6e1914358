"""The one error the durable storage raises: the data dir cannot be used or is corrupt.

A node that gets it must stop rather than run on state it cannot trust.
"""

from caddy.errors import CaddyError


class StorageError(CaddyError):
    """Unrecoverable: corruption before the tail, an unusable data dir, or another node's data."""
