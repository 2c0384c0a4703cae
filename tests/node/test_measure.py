"""Tier 5 measurement (printed to the CI log, asserted only loosely):
`kubectl apply` of a session -> Ready on the real node, images present, over
N sessions; tier 4 prints the same figure for the stand-in kubelet in the
same run (tests/measure.py says how it is taken)."""
from __future__ import annotations

import os
import statistics

from conftest import log
from measure import STEPS, apply_to_ready, summary

N = int(os.environ.get("NBO_TIER5_MEASURE_N", "20"))


def test_apply_to_ready_on_the_real_node(ns, kube, capsys):
    rows = apply_to_ready(kube, str(ns), N, ns.node.kubectl, ns.node.kernel_image)
    line = summary(rows)
    with capsys.disabled():
        print(f"\n[tier5 measure] kubectl apply -> Ready over {N} sessions (real node, images present): {line}")
        print(f"[tier5 measure] {STEPS}")
    log(f"measure: {line}")
    assert statistics.median([r["total"] for r in rows]) < 30
