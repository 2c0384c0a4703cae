"""Tier 3 fixtures: the real binary in local mode on a free loopback port,
with a temp data dir and the venv's python as the kernel, driven by the
official MCP Python SDK."""
import os
import sys

import pytest

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from harness import Sidecar  # noqa: E402


@pytest.fixture(scope="module")
def mcp_sidecar(tmp_path_factory):
    """One sidecar per test module; tests use their own notebooks and keys."""
    s = Sidecar(tmp_path_factory.mktemp("mcp")).start()
    yield s
    s.close()


@pytest.fixture
def fresh_sidecar(tmp_path):
    s = Sidecar(tmp_path).start()
    yield s
    s.close()
