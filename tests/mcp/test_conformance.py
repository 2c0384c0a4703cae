"""Tier 3: the official MCP conformance suite (@modelcontextprotocol/conformance
from npm, run with npx) against the sidecar's /mcp, through the token-adding
proxy (`conformance.py`); the expected failures, with reasons, are in
conformance-expected-failures.yml."""
import pathlib

import pytest

import conformance

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def conformance_dir():
    return conformance.install()


def test_conformance_suite(mcp_sidecar, conformance_dir, tmp_path):
    conformance.run_suite(conformance_dir, mcp_sidecar.port, mcp_sidecar.token,
                          HERE / "conformance-expected-failures.yml", tmp_path / "results")
