"""Lets `bin/` scripts run straight from a checkout: re-executes them under the repo's `.venv`.

Imports nothing but the standard library, so it works before the dependencies are found.
"""

from __future__ import annotations

import importlib.util
import os
import sys

REQUIRED_MODULES = ("zmq", "pykka", "msgpack", "yaml", "tenacity")


def ensure_dependencies(script: str) -> None:
    """Return if the dependencies import; else re-exec under `.venv/bin/python`, or exit 1."""
    if all(importlib.util.find_spec(name) is not None for name in REQUIRED_MODULES):
        return
    root = os.path.dirname(os.path.dirname(os.path.realpath(script)))
    venv_python = os.path.join(root, ".venv", "bin", "python")
    if os.path.exists(venv_python) and os.path.realpath(sys.prefix) != os.path.realpath(
        os.path.join(root, ".venv")
    ):
        os.execv(venv_python, [venv_python, script, *sys.argv[1:]])
    name = os.path.basename(script)
    sys.stderr.write(f"{name}: dependencies missing; run `make venv` in {root} first\n")
    raise SystemExit(1)
