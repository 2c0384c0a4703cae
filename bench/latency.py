"""p50/p99 of `1+1` through the sidecar (POST + GET ?wait) beside the same
execute_request sent straight to a kernel over ZeroMQ (jupyter_client), in one run.

    $(.ci/python-env)/bin/python bench/latency.py [N]
"""
import sys
import time

from jupyter_client.manager import KernelManager

from common import pct, start_sidecar



def sidecar_round(s):
    t0 = time.perf_counter()
    r = s.http.post(s.url + "/v1/executions", json={"code": "1+1"}, timeout=30)
    eid = r.json()["id"]
    e = s.http.get(f"{s.url}/v1/executions/{eid}", params={"wait": 30}, timeout=60).json()
    assert e["state"] == "completed" and e["outputs"][0]["data"]["text/plain"] == "2", e
    return time.perf_counter() - t0


def raw_round(kc):
    t0 = time.perf_counter()
    msg_id = kc.execute("1+1")
    result = None
    while True:  # until the kernel is idle for our request, as the sidecar waits
        m = kc.get_iopub_msg(timeout=30)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "execute_result":
            result = m["content"]["data"]["text/plain"]
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "ok" and result == "2"
    return time.perf_counter() - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    s = start_sidecar()
    km = KernelManager(kernel_name="python3")
    km.kernel_cmd = None
    km.start_kernel(extra_arguments=[])
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    try:
        for _ in range(20):  # warm both
            sidecar_round(s)
            raw_round(kc)
        side, raw = [], []
        for i in range(n):  # interleaved, so drift hits both alike
            side.append(sidecar_round(s))
            raw.append(raw_round(kc))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        s.stop()
    ms = lambda v: v * 1000  # noqa: E731
    print(f"1+1 round trip, N={n}")
    print(f"  sidecar POST+GET?wait : p50 {ms(pct(side, 50)):.2f} ms  p99 {ms(pct(side, 99)):.2f} ms")
    print(f"  raw ZeroMQ (jupyter_client): p50 {ms(pct(raw, 50)):.2f} ms  p99 {ms(pct(raw, 99)):.2f} ms")
    print(f"  ratio sidecar/raw      : p50 {pct(side, 50) / pct(raw, 50):.2f}x  p99 {pct(side, 99) / pct(raw, 99):.2f}x")


if __name__ == "__main__":
    main()
