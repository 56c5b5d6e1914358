"""Running a user's shell command (a health check, a hook) with a deadline: its whole process
group is killed at the timeout, so a command's children cannot outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping


def run_shell(
    command: str, env: Mapping[str, str], timeout_s: float, stdin: bytes | None = None
) -> str | None:
    """None when `command` exits 0 within `timeout_s`; otherwise why not, in a few words (its
    exit status and the last line it wrote to stderr)."""
    try:
        process = subprocess.Popen(
            command,
            shell=True,
            env={**os.environ, **env},
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:
        return f"could not start: {error.strerror or error}"
    try:
        _, stderr = process.communicate(stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()
        return f"still running after {timeout_s:g} s (killed)"
    if process.returncode == 0:
        return None
    said = stderr.decode("utf-8", "replace").strip().splitlines()
    return f"exit status {process.returncode}" + (f": {said[-1]}" if said else "")
