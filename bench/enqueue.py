"""Durable enqueue throughput and latency with 1, 16 and 64 concurrent clients
(wrk over loopback, keep-alive), with group commit beside the same inserts
done one commit per row (NBO_WRITER_MAX_BATCH=1), synchronous=FULL both.

    apt-get install wrk; $(.ci/python-env)/bin/python bench/enqueue.py [seconds]
"""
import pathlib
import re
import shutil
import subprocess
import sys

from common import start_sidecar

SECS = sys.argv[1] if len(sys.argv) > 1 else "5"
LUA = str(pathlib.Path(__file__).with_name("enqueue.lua"))


def run_wrk(url, conns):
    threads = min(2, conns)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{SECS}s", "--latency", "-s", LUA,
                          url + "/v1/executions"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert not non2xx, out
    return rps, lat.get("50"), lat.get("99")


def main():
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    rows = []
    for label, env in (("group commit", None), ("commit per row", {"NBO_WRITER_MAX_BATCH": "1"})):
        s = start_sidecar(env=env)
        try:
            for conns in (1, 16, 64):
                rps, p50, p99 = run_wrk(s.url, conns)
                rows.append((label, conns, rps, p50, p99))
        finally:
            s.stop()
    print(f"durable enqueue (POST /v1/executions -> 202 after commit), {SECS}s per cell")
    print(f"  {'writer':<15} {'clients':>7} {'enqueues/s':>11} {'p50':>9} {'p99':>9}")
    for label, c, rps, p50, p99 in rows:
        print(f"  {label:<15} {c:>7} {rps:>11.0f} {p50:>9} {p99:>9}")
    g = {c: r for l, c, r, *_ in rows if l == "group commit"}
    o = {c: r for l, c, r, *_ in rows if l != "group commit"}
    print("  ratio group/per-row: " + ", ".join(f"{c} clients {g[c] / o[c]:.1f}x" for c in (1, 16, 64)))


if __name__ == "__main__":
    main()
