"""Tier 4 measurement (printed to the CI log, asserted only loosely): the
same `kubectl apply` -> Ready figure as tier 5 prints for the real node
(tests/measure.py), here with the stand-in kubelet, so the two compare in one
CI run."""
from __future__ import annotations

import os
import statistics

from measure import STEPS, apply_to_ready, summary
from sessions import session_obj

N = int(os.environ.get("NBO_TIER4_MEASURE_N", "20"))


def test_apply_to_ready_with_the_stand_in_kubelet(ns, cluster, capsys):
    image = session_obj(str(ns), "x")["spec"]["kernel"]["image"]
    rows = apply_to_ready(ns.kube, str(ns), N, cluster.kubectl, image)
    line = summary(rows)
    with capsys.disabled():
        print(f"\n[tier4 measure] kubectl apply -> Ready over {N} sessions (stand-in kubelet): {line}")
        print(f"[tier4 measure] {STEPS}")
    assert statistics.median([r["total"] for r in rows]) < 60
