"""Fixtures shared by the Python test tiers; helpers live in harness.py."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import Sidecar  # noqa: E402


@pytest.fixture
def sidecar(tmp_path):
    s = Sidecar(tmp_path).start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def shared_sidecar(tmp_path_factory):
    """One sidecar for tests that do not disturb each other."""
    s = Sidecar(tmp_path_factory.mktemp("shared")).start()
    yield s
    s.close()
