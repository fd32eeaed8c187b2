"""Shared test setup."""

from __future__ import annotations

import sys

import pytest
from loguru import logger


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    """cli.main() points loguru at the captured stderr of its test; put a plain handler back afterwards."""
    yield
    logger.remove()
    logger.add(sys.__stderr__, level="INFO")
