"""`kubectl apply` of a session -> Ready, measured the same way in tier 4
(stand-in kubelet) and tier 5 (real node), so the two figures printed in one
CI run compare: N sessions one after another, each moment taken when a watch
saw it, split into the steps a user waits for: pod scheduled, sandbox ready
(PodReadyToStartContainers: pause container and network), sidecar started
(its startup probe passed), kernel container started, kernel answering (the
session Ready)."""
from __future__ import annotations

import statistics
import threading
import time

from kube import path


def cond(obj: dict, type_: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


class Seen:
    """First moment (monotonic) each pod and session reached each step, by watch."""

    def __init__(self, kube, ns: str):
        self.kube, self.ns = kube, ns
        self.t: dict[str, dict[str, float]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=(k,), daemon=True)
                        for k in ("Pod", "NotebookSession")]

    def mark(self, name: str, step: str):
        with self.lock:
            self.t.setdefault(name, {}).setdefault(step, time.monotonic())

    def _pod(self, p: dict):
        name = p["metadata"]["name"].removesuffix("-kernel")
        st = p.get("status", {})
        if cond(p, "PodScheduled").get("status") == "True":
            self.mark(name, "scheduled")
        if cond(p, "PodReadyToStartContainers").get("status") == "True":
            self.mark(name, "sandbox")
        init = (st.get("initContainerStatuses") or [{}])[0]
        if init.get("started"):
            self.mark(name, "sidecar")
        main = (st.get("containerStatuses") or [{}])[0]
        if main.get("started"):
            self.mark(name, "kernel")

    def _session(self, s: dict):
        if s.get("status", {}).get("phase") == "Ready" and cond(s, "Ready").get("status") == "True":
            self.mark(s["metadata"]["name"], "ready")

    def _watch(self, kind: str):
        coll = path(kind, self.ns)
        handle = self._pod if kind == "Pod" else self._session
        while not self.stop.is_set():
            listing = self.kube.get(coll)
            for o in listing.get("items", []):
                handle(o)
            try:
                for typ, o in self.kube.watch(coll, listing["metadata"]["resourceVersion"], timeout=30, stop=self.stop):
                    if typ in ("ADDED", "MODIFIED"):
                        handle(o)
            except Exception:  # noqa: BLE001 - relist (410, a dropped stream)
                time.sleep(0.1)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


COLUMNS = ["total", "scheduled", "sandbox", "sidecar", "kernel", "answering"]
STEPS = ("steps: apply->scheduled, scheduled->sandbox ready, sandbox->sidecar started (startup probe), "
         "sidecar->kernel container started, kernel started->session Ready (kernel answering)")


def apply_to_ready(kube, ns: str, n: int, kubectl, image: str, timeout: float = 120) -> list[dict]:
    """Applies n sessions one at a time with `kubectl apply`, each deleted once
    Ready (one live session at a time); returns the steps of each, in s."""
    rows = []
    with Seen(kube, ns) as seen:
        for i in range(n):
            name = f"m{i:02d}"
            doc = (f"apiVersion: notebook.dev/v1alpha1\nkind: NotebookSession\n"
                   f"metadata: {{name: {name}, namespace: {ns}}}\nspec: {{kernel: {{image: {image}}}}}\n")
            t0 = time.monotonic()
            kubectl("apply", "-f", "-", input=doc)
            deadline = t0 + timeout
            while "ready" not in seen.t.get(name, {}):
                assert time.monotonic() < deadline, f"{name} not Ready in {timeout}s: {seen.t.get(name)}"
                time.sleep(0.02)
            t = seen.t[name]
            rows.append({"total": t["ready"] - t0, "scheduled": t.get("scheduled", t0) - t0,
                         "sandbox": t.get("sandbox", t["ready"]) - t.get("scheduled", t0),
                         "sidecar": t.get("sidecar", t["ready"]) - t.get("sandbox", t0),
                         "kernel": t.get("kernel", t["ready"]) - t.get("sidecar", t0),
                         "answering": t["ready"] - t.get("kernel", t0)})
            kube.delete(path("NotebookSession", ns, name))
    return rows


def summary(rows: list[dict]) -> str:
    return "  ".join(f"{c} p50 {statistics.median([r[c] for r in rows]):.2f}s p99 {pct([r[c] for r in rows], 99):.2f}s"
                     for c in COLUMNS)
