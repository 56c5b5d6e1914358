"""Fixtures shared by every test folder."""

import pytest

from tests.harness import Processes


@pytest.fixture
def processes():
    """Start processes through this; every one still running is killed at the end of the test."""
    started = Processes()
    yield started
    started.cleanup()
