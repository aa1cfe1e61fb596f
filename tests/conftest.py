"""Shared test configuration."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_tornado_access_log():
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    yield
