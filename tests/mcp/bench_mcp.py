"""Benchmark (not a test): the MCP `execute` tool against the HTTP route.

1. p50/p99 of `execute` of `1+1` through the official Python SDK, beside the
   same through HTTP (POST /v1/executions + GET ?wait), interleaved in one run
   against one sidecar and kernel.
2. 8 concurrent MCP clients x 25 `execute` calls on one kernel: calls/s, p50,
   p99; checks that every output came back to the client that asked, and that
   the kernel ran the executions in the order they arrived.

    cargo build --release
    $(.ci/python-env)/bin/python tests/mcp/bench_mcp.py [N] [CLIENTS] [CALLS]

Uses target/release/notebook-operator unless NBO_BIN says otherwise.
"""
import logging
import os
import pathlib
import signal
import sys
import tempfile
import time

import anyio
import httpx

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("NBO_BIN", str(HERE.parent.parent / "target" / "release" / "notebook-operator"))

import harness  # noqa: E402
from mcpclient import mcp_session  # noqa: E402

# rmcp answers a session DELETE with 202, the Python SDK expects 200 or 204
# and logs a warning for each closed session; it changes nothing measured.
logging.getLogger("mcp.client.streamable_http").setLevel(logging.ERROR)

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
CALLS = int(sys.argv[3]) if len(sys.argv) > 3 else 25


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(x):
    return f"{x * 1000:7.2f} ms"


async def mcp_round(session):
    t0 = time.perf_counter()
    r = await session.call_tool("execute", {"code": "1+1"})
    dt = time.perf_counter() - t0
    assert not r.is_error and r.content[1].text == "2", r
    return dt


async def http_round(client, s):
    t0 = time.perf_counter()
    r = await client.post(f"{s.url}/v1/executions", json={"code": "1+1"})
    eid = r.json()["id"]
    e = (await client.get(f"{s.url}/v1/executions/{eid}", params={"wait": 30})).json()
    dt = time.perf_counter() - t0
    assert e["state"] == "completed" and e["outputs"][0]["data"]["text/plain"] == "2", e
    return dt


async def latency(s):
    headers = {"Authorization": f"Bearer {s.token}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        async with mcp_session(s) as session:
            for _ in range(20):  # warm both paths
                await mcp_round(session)
                await http_round(client, s)
            via_mcp, via_http = [], []
            for _ in range(N):  # interleaved, so drift hits both alike
                via_mcp.append(await mcp_round(session))
                via_http.append(await http_round(client, s))
    return via_mcp, via_http


async def concurrent(s):
    """Each client runs CALLS executes one after another; all clients at once."""
    results = {}

    async def client(c):
        mine = []
        async with mcp_session(s) as session:
            await session.call_tool("execute", {"code": "0"})  # session warm, not timed
            await start.wait()
            for i in range(CALLS):
                tag = f"c{c}-{i}"
                t0 = time.perf_counter()
                r = await session.call_tool("execute", {"code": f"{tag!r}", "timeout_s": 120})
                dt = time.perf_counter() - t0
                mine.append((tag, dt, r))
        results[c] = mine

    start = anyio.Event()
    async with anyio.create_task_group() as tg:
        for c in range(CLIENTS):
            tg.start_soon(client, c)
        await anyio.sleep(2)  # all sessions open and warm
        t0 = time.perf_counter()
        start.set()
    wall = time.perf_counter() - t0
    return results, wall


def check_concurrent(s, results):
    wrong, ids = 0, {}
    for c, mine in results.items():
        for tag, _, r in mine:
            if r.is_error or r.structured_content.get("state") != "completed" or r.content[1].text != repr(tag):
                wrong += 1
            ids[r.structured_content["id"]] = tag
    # Arrival order is the queue's order (list is newest first); execution
    # counts must rise along it: the kernel ran them as they arrived.
    listed = s.http.get(s.url + "/v1/executions", params={"limit": 1000}, timeout=30).json()["executions"]
    ours = [e for e in reversed(listed) if e["id"] in ids]
    counts = [e["execution_count"] for e in ours]
    in_order = len(ours) == len(ids) and all(a < b for a, b in zip(counts, counts[1:]))
    # And each client saw its own calls in the order it made them.
    per_client_order = all(
        [int(t.split("-")[1]) for t, _, _ in mine] == list(range(CALLS)) for mine in results.values())
    return wrong, in_order, per_client_order


def main():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="nbo-bench-mcp-"))
    s = harness.Sidecar(tmp).start()
    try:
        print(f"binary: {harness.BIN}  cores: {os.cpu_count()}")
        via_mcp, via_http = anyio.run(latency, s)
        print(f"\nexecute `1+1`, sequential, {N} calls each, interleaved")
        print(f"  MCP tool (Python SDK)        p50 {ms(pct(via_mcp, 50))}   p99 {ms(pct(via_mcp, 99))}")
        print(f"  HTTP POST + GET ?wait        p50 {ms(pct(via_http, 50))}   p99 {ms(pct(via_http, 99))}")

        results, wall = anyio.run(concurrent, s)
        lat = [dt for mine in results.values() for _, dt, _ in mine]
        total = len(lat)
        wrong, in_order, own_order = check_concurrent(s, results)
        print(f"\n{CLIENTS} concurrent MCP clients x {CALLS} execute calls, one kernel")
        print(f"  {total} calls in {wall:.2f} s = {total / wall:.1f} calls/s")
        print(f"  latency per call             p50 {ms(pct(lat, 50))}   p99 {ms(pct(lat, 99))}")
        print(f"  outputs returned to the wrong caller or missing: {wrong}")
        print(f"  executed in arrival order: {in_order}; each client's calls in its own order: {own_order}")
        if wrong or not in_order or not own_order:
            sys.exit(1)
    finally:
        s.stop()
        try:
            os.kill(s.kernel_pid(), signal.SIGKILL)
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    main()
