"""The issue-16 benchmarks with the native load clients (examples/bench.rs),
each figure beside its reference in the same run, as ratios:

- exec: `1+1` one round trip (POST ?wait) and POST + GET ?wait, beside
  jupyter_client's execute + wait for idle on the same kind of kernel;
  the same one round trip from Python (requests) too.
- mcp: MCP `execute`, one client alone (beside the same reference) and
  8 clients x 25 calls at once (calls/s).
- sse: print -> client latency with 1000 SSE clients, and with 100, beside
  the kernel's own iopub read over ZeroMQ; the sidecar's peak RSS.
- enqueue: 64 clients enqueueing, group commit beside one commit per row.

    cargo build --release --example bench --bin notebook-operator
    $(.ci/python-env)/bin/python bench/native.py [exec|mcp|sse|enqueue ...]
"""
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

from jupyter_client.manager import KernelManager

from common import ROOT, pct, start_sidecar
from events import raw_iopub
from latency import raw_round

NATIVE = pathlib.Path(os.environ.get("NBO_BENCH_BIN", ROOT / "target" / "release" / "examples" / "bench"))


def native(s, *args):
    out = subprocess.run([str(NATIVE), "--url", s.url, "--token", s.token, *args],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"bench {args[0]} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_kernel():
    km = KernelManager(kernel_name="python3")
    km.start_kernel(extra_arguments=[])
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    for _ in range(20):
        raw_round(kc)
    return km, kc


def reference(kc, n):
    return [raw_round(kc) for _ in range(n)]


def ms(v):
    return f"{v * 1000:.2f} ms"


def ratio_line(label, p50, p99, ref):
    return (f"  {label:<34} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms   "
            f"ratio p50 {p50 / (pct(ref, 50) * 1000):.2f}x  p99 {p99 / (pct(ref, 99) * 1000):.2f}x")


def python_one_round(s):
    t0 = time.perf_counter()
    r = s.http.post(s.url + "/v1/executions", params={"wait": 30}, json={"code": "1+1"}, timeout=60)
    e = r.json()
    assert r.status_code == 200 and e["outputs"][0]["data"]["text/plain"] == "2", e
    return time.perf_counter() - t0


def bench_exec(s, kc, n=300):
    # Blocks of the three, one after another, so drift hits all alike.
    ref, py, nat1, nat2 = [], [], [], []
    for _ in range(n // 50):
        ref += reference(kc, 50)
        r = native(s, "exec", "-n", "50")
        nat1.append(r["one_round_trip"])
        nat2.append(r["post_then_get"])
        py += [python_one_round(s) for _ in range(50)]
    med = lambda rows, k: sorted(x[k] for x in rows)[len(rows) // 2]  # noqa: E731
    print(f"1+1, {n} each (blocks of 50, interleaved)")
    print(f"  {'reference: jupyter_client':<34} p50 {pct(ref, 50) * 1000:7.2f} ms  p99 {pct(ref, 99) * 1000:7.2f} ms")
    print(ratio_line("native POST ?wait (one trip)", med(nat1, "p50_ms"), med(nat1, "p99_ms"), ref))
    print(ratio_line("native POST + GET ?wait", med(nat2, "p50_ms"), med(nat2, "p99_ms"), ref))
    print(ratio_line("python requests POST ?wait", pct(py, 50) * 1000, pct(py, 99) * 1000, ref))


def bench_mcp(s, kc, n=200):
    ref, alone = [], []
    for _ in range(n // 50):  # interleaved blocks, as for exec
        ref += reference(kc, 50)
        alone.append(native(s, "mcp", "--clients", "0", "--alone", "50")["alone"])
    med = lambda k: sorted(x[k] for x in alone)[len(alone) // 2]  # noqa: E731
    r = native(s, "mcp", "--clients", "8", "--calls", "25", "--alone", "0")
    print(f"MCP execute (native client, streamable HTTP), {n} alone (blocks of 50, interleaved)")
    print(f"  {'reference: jupyter_client':<34} p50 {pct(ref, 50) * 1000:7.2f} ms  p99 {pct(ref, 99) * 1000:7.2f} ms")
    print(ratio_line("one client, 1+1", med("p50_ms"), med("p99_ms"), ref))
    f = r["kernel_status_floor"]
    print(f"  transport floor (kernel_status): p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms")
    c = r["concurrent"]
    print(f"  8 clients x 25 calls: {r['calls_per_s']:.1f} calls/s, p50 {c['p50_ms']:.1f} ms p99 {c['p99_ms']:.1f} ms,"
          f" every output to its caller in order: {r['every_output_to_its_caller']}")


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def bench_sse(s):
    print("SSE fan-out: print -> client (native subscribers), beside the kernel's own iopub")
    for clients in (1000, 100):
        ref, stop = [], threading.Event()
        t = threading.Thread(target=raw_iopub, args=(s, stop, ref), daemon=True)
        t.start()
        time.sleep(0.5)  # the reference is subscribed before the prints start
        r = native(s, "sse", "--clients", str(clients), "--prints", "200")
        stop.set()
        t.join(timeout=5)
        p = r["print_to_client"]
        print(f"  {clients:>5} clients: p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms  max {p['max_ms']:.1f} ms"
              f"  ({p['n']} events, {r['clients_missing_events']} clients short, connected in {r['connect_s']:.2f} s)")
        if ref:
            print(f"         iopub reference: p50 {pct(ref, 50) * 1000:.2f} ms  p99 {pct(ref, 99) * 1000:.2f} ms"
                  f"  ratio p50 {p['p50_ms'] / (pct(ref, 50) * 1000):.2f}x")
        print(f"         sidecar peak RSS so far {rss_kib(s.proc.pid) / 1024:.1f} MiB")


def bench_enqueue():
    print("Durable enqueue, 64 clients, 5 s (synchronous=FULL)")
    rows = {}
    for label, env in (("group commit", None), ("commit per row", {"NBO_WRITER_MAX_BATCH": "1"})):
        s = start_sidecar(env=env)
        try:
            rows[label] = native(s, "enqueue", "--clients", "64", "--seconds", "5")
        finally:
            s.stop()
    for label, r in rows.items():
        lat = r["latency"]
        print(f"  {label:<15} {r['per_s']:9.0f}/s  p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms"
              f"  commits {r['commits']:.0f}, enqueues per commit {r['enqueues_per_commit_with_enqueues']:.1f},"
              f" largest batch {r['largest_batch']:.0f}")
    g, one = rows["group commit"]["per_s"], rows["commit per row"]["per_s"]
    print(f"  ratio group/per-row: {g / one:.2f}x")


def main():
    which = sys.argv[1:] or ["exec", "mcp", "sse", "enqueue"]
    if not NATIVE.exists():
        sys.exit(f"no native bench client at {NATIVE}: cargo build --release --example bench")
    if "enqueue" in which:
        bench_enqueue()
    if not set(which) & {"exec", "mcp", "sse"}:
        return
    s = start_sidecar()
    km, kc = reference_kernel()
    try:
        if "exec" in which:
            bench_exec(s, kc)
        if "mcp" in which:
            bench_mcp(s, kc)
        if "sse" in which:
            bench_sse(s)
        print(f"sidecar peak RSS {rss_kib(s.proc.pid) / 1024:.1f} MiB")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        s.stop()


if __name__ == "__main__":
    main()
