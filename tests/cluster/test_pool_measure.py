"""Tier 4 measurement, issue 17: how long a client waits for a kernel from a
NotebookPool, warm against cold, printed to the CI log in one run.

Two figures, each over sessions created one at a time and in bursts of
BURST at once:
- create -> Ready: a client creates a NotebookSession with poolRef and a
  watch of its own sees the status say Ready (the way agent-sandbox's claim
  is timed: create, then the claim's Ready seen by a watch);
- create -> first `1+1`: an agent's `create_session{pool, wait_ready_s}` and
  then `execute` of `1+1` through the gateway, with the official MCP client,
  until the answer is back.

Warm is a pool with warm pods ready; cold is a pool of 0 replicas (the
session starts cold from the pool's template). Before each warm claim the
test waits until the pool has a warm pod for every session it is about to
create, so a warm figure is a warm claim. Asserted only loosely (a warm
claim beats a cold start); the figures are for the note."""
from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time

import anyio
from harness import BIN
from kube import path
from measure import pct
from test_gateway import Agent, mcp_at, ok, texts
from test_pools import create_pool, wait_pool

N = int(os.environ.get("NBO_POOL_MEASURE_N", "50"))
N_COLD = int(os.environ.get("NBO_POOL_MEASURE_COLD_N", "10"))
N_GATEWAY = int(os.environ.get("NBO_POOL_MEASURE_GATEWAY_N", "20"))
BURST = 10
TIMEOUT = 120


class ReadyTimes:
    """The first moment (monotonic) each NotebookSession of a namespace was
    seen Ready by one watch, with a condition variable to wait on."""

    def __init__(self, kube, ns: str):
        self.kube, self.ns = kube, ns
        self.t: dict[str, float] = {}
        self.cv = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _see(self, s: dict):
        st = s.get("status", {})
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        if st.get("phase") == "Ready" and ready.get("status") == "True":
            now = time.monotonic()
            with self.cv:
                self.t.setdefault(s["metadata"]["name"], now)
                self.cv.notify_all()

    def _run(self):
        coll = path("NotebookSession", self.ns)
        while not self.stop.is_set():
            try:
                listing = self.kube.get(coll)
                for s in listing.get("items", []):
                    self._see(s)
                rv = listing["metadata"]["resourceVersion"]
                for typ, s in self.kube.watch(coll, rv, timeout=30, stop=self.stop):
                    if typ in ("ADDED", "MODIFIED"):
                        self._see(s)
            except Exception:  # noqa: BLE001 - a dropped stream or a 410: list again
                self.stop.wait(0.1)

    def wait(self, names: list[str], timeout: float = TIMEOUT) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        with self.cv:
            while not all(n in self.t for n in names):
                left = deadline - time.monotonic()
                assert left > 0, f"not Ready in {timeout}s: {[n for n in names if n not in self.t]}"
                self.cv.wait(left)
            return {n: self.t[n] for n in names}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def session(ns: str, name: str, pool: str) -> dict:
    return {"apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
            "metadata": {"name": name, "namespace": ns}, "spec": {"kernel": {}, "poolRef": {"name": pool}}}


def wait_warm(kube, ns: str, pool: str, count: int):
    """Until the pool has `count` warm pods ready (none when cold)."""
    if count:
        wait_pool(kube, ns, pool, lambda st: st.get("ready", 0) >= count, 2 * TIMEOUT, f"{count} ready")


def delete_all(kube, ns: str, names: list[str]):
    for n in names:
        kube.delete(path("NotebookSession", ns, n))
    for n in names:
        kube.wait_for("NotebookSession", ns, n, lambda s: s is None, TIMEOUT, f"{n} gone")


def create_to_ready(kube, ns: str, pool: str, n: int, size: int, warm: bool, tag: str) -> list[float]:
    """n sessions of `pool`, `size` at once: create -> Ready seen by a watch, in s."""
    out: list[float] = []
    with ReadyTimes(kube, ns) as seen:
        for b in range(n // size):
            wait_warm(kube, ns, pool, size if warm else 0)
            names = [f"{tag}-{b}-{i}" for i in range(size)]
            t0: dict[str, float] = {}

            def create(name):
                t0[name] = time.monotonic()
                kube.create(path("NotebookSession", ns), session(ns, name, pool))

            threads = [threading.Thread(target=create, args=(name,)) for name in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ready = seen.wait(names)
            out += [ready[name] - t0[name] for name in names]
            if os.environ.get("NBO_POOL_MEASURE_TRACE"):
                off = time.time() - time.monotonic()
                for name in names:
                    print(f"[trace] {name} created {t0[name] + off:.3f} ready {ready[name] + off:.3f}")
            delete_all(kube, ns, names)
    return out


def create_to_first_answer(gateway, kube, ns: str, agents: list[Agent], pool: str, n: int, size: int, warm: bool,
                           tag: str) -> list[float]:
    """n sessions of `pool` made through the gateway, `size` at once (one
    agent each, in its own MCP session opened beforehand): from the start of
    create_session{pool, wait_ready_s} to the answer of `execute 1+1`, in s."""
    out: list[float] = []

    async def one(session, name: str):
        t0 = time.monotonic()
        created = ok(await session.call_tool("create_session", {
            "namespace": ns, "name": name, "pool": pool, "wait_ready_s": TIMEOUT}))
        assert created["ready"] is True, created
        answer = await session.call_tool("execute", {"session": name, "namespace": ns, "code": "1+1"})
        took = time.monotonic() - t0
        assert not answer.is_error and "2" in texts(answer)[1:], texts(answer)
        out.append(took)

    async def main():
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(mcp_at(gateway.url + "/mcp", a.token))
                        for a in agents[:size]]
            for b in range(n // size):
                wait_warm(kube, ns, pool, size if warm else 0)
                names = [f"{tag}-{b}-{i}" for i in range(size)]
                with anyio.fail_after(TIMEOUT * 2):
                    async with anyio.create_task_group() as tg:
                        for s, name in zip(sessions, names):
                            tg.start_soon(one, s, name)
                delete_all(kube, ns, names)

    anyio.run(main)
    return out


def line(what: str, xs: list[float]) -> str:
    if not xs:
        return f"{what}: not measured (n=0)"
    return (f"{what}: p50 {statistics.median(xs) * 1000:.0f} ms, p99 {pct(xs, 99) * 1000:.0f} ms "
            f"(n={len(xs)}, min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})")


def test_measure_warm_against_cold_claims(ns, gateway, kube, capsys):
    ns_name = str(ns)
    create_pool(kube, ns, "hot", BURST)
    create_pool(kube, ns, "cold", 0)
    wait_warm(kube, ns_name, "hot", BURST)
    agents = [Agent(ns, f"m{i}") for i in range(BURST)]
    rows = {
        "warm, one at a time: create -> Ready": create_to_ready(kube, ns_name, "hot", N, 1, True, "w1"),
        f"warm, bursts of {BURST}: create -> Ready": create_to_ready(kube, ns_name, "hot", N, BURST, True, "wb"),
        "cold, one at a time: create -> Ready": create_to_ready(kube, ns_name, "cold", N_COLD, 1, False, "c1"),
        f"cold, bursts of {BURST}: create -> Ready": create_to_ready(kube, ns_name, "cold", N_COLD, BURST, False, "cb"),
        "warm, one at a time: create_session + execute 1+1 (gateway)":
            create_to_first_answer(gateway, kube, ns_name, agents, "hot", N_GATEWAY, 1, True, "gw1"),
        f"warm, bursts of {BURST}: create_session + execute 1+1 (gateway)":
            create_to_first_answer(gateway, kube, ns_name, agents, "hot", N_GATEWAY, BURST, True, "gwb"),
        "cold, one at a time: create_session + execute 1+1 (gateway)":
            create_to_first_answer(gateway, kube, ns_name, agents, "cold", N_COLD, 1, False, "gc1"),
    }
    kube.patch(path("NotebookPool", ns, "hot"), {"spec": {"replicas": 0}})
    with capsys.disabled():
        build = "release" if "release" in BIN.parts else "debug"
        print(f"\n[pool measure] tier 4 (real kube-apiserver, stand-in kubelet, {build} build of {BIN})")
        for what, xs in rows.items():
            print(f"[pool measure] {line(what, xs)}")
    warm, cold = rows["warm, one at a time: create -> Ready"], rows["cold, one at a time: create -> Ready"]
    assert warm, "nothing was measured"
    assert not cold or statistics.median(warm) < statistics.median(cold), (warm, cold)
