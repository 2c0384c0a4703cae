"""Tier 2: the sidecar of a warm pool pod (`sidecar --warm`) against a real
ipykernel. Until a session claims it, it serves only /v1/status and the
claim, and only with the pool's token; `POST /v1/claim` swaps that token for
the session's own, at once and for good (also across a sidecar restart); a
repeat of the same claim answers 200, any other 409. A warmup
(`--warmup CODE`, the pool's `spec.template.warmup`) runs in the kernel
before the sidecar is ready, and leaves its effects in the kernel and
nothing in the claimed session's history; a failed one keeps the sidecar
not ready and says why."""
import json
import os
import signal
import subprocess
import sys
import time

import requests

from harness import SidecarHttp, free_port, free_port_block, sse_event, start_pod_sidecar, text_of, wait_readyz

POOL = {"Authorization": "Bearer pool-token-0123456789"}
SESSION_TOKEN = "session-token-abcdef0123456789"
SESSION = {"Authorization": f"Bearer {SESSION_TOKEN}"}


class Session(SidecarHttp):
    """The execution API of a claimed sidecar, with the session's token."""

    def __init__(self, url):
        self.url = url
        self.http = requests.Session()
        self.http.headers.update(SESSION)


def claim_for_s1(url):
    """The operator's claim for session ns/s1 with the pool's token; 200."""
    claim = {"session": "s1", "namespace": "ns", "token": SESSION_TOKEN}
    assert requests.post(url + "/v1/claim", headers=POOL, json=claim, timeout=10).status_code == 200


def mcp_initialize(url, host):
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "tier2", "version": "0"}}}
    return requests.post(url + "/mcp", json=body, timeout=10,
                         headers={**SESSION, "Host": host, "Accept": "application/json, text/event-stream"})


def test_a_warm_sidecar_serves_nothing_until_claimed_then_only_the_session_token(tmp_path):
    secrets(tmp_path)
    port, base = free_port(), free_port_block(5)
    url = f"http://127.0.0.1:{port}"
    side = start_pod_sidecar(tmp_path, port, base, "--warm")
    kernel = None
    try:
        kernel = start_kernel(tmp_path)
        wait_readyz(url, side)

        # Warm: status answers to the pool token; every client route is 503 "warm".
        assert requests.get(url + "/v1/status", headers=POOL, timeout=10).status_code == 200
        for method, route in [("post", "/v1/executions"), ("get", "/v1/executions"), ("get", "/v1/kernel"),
                              ("get", "/v1/assets"), ("post", "/mcp")]:
            r = getattr(requests, method)(url + route, headers=POOL, json={"code": "1"}, timeout=10)
            assert r.status_code == 503, (route, r.status_code, r.text)
            assert r.json()["error"]["code"] == "warm", r.text
        assert requests.get(url + "/v1/status", headers=SESSION, timeout=10).status_code == 401

        claim = {"session": "s1", "namespace": "ns", "token": SESSION_TOKEN, "allowed_hosts": ["s1.ns.svc"]}
        r = requests.post(url + "/v1/claim", headers=POOL, json=claim, timeout=10)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert (answer["session"], answer["namespace"]) == ("s1", "ns"), answer
        # The answer carries the sidecar's status, so the claimer need not ask again.
        assert answer["status"]["kernel"]["state"] == "idle" and answer["status"]["revision"], answer

        # Claimed: the pool token is gone, the session's works everywhere.
        assert requests.get(url + "/v1/status", headers=POOL, timeout=10).status_code == 401
        r = requests.post(url + "/v1/executions", json={"code": "z = 6 * 7; z"}, headers=SESSION, timeout=10)
        assert r.status_code == 202, r.text
        e = requests.get(f"{url}/v1/executions/{r.json()['id']}", params={"wait": 30}, headers=SESSION).json()
        assert text_of(e) == "42", e

        # MCP answers on the claiming session's Service name, which the warm
        # pod could not know when it started, and on no other.
        assert mcp_initialize(url, "s1.ns.svc").status_code == 200
        assert mcp_initialize(url, "other.ns.svc").status_code != 200

        # A repeat of the same claim is 200; another session's is 409.
        assert requests.post(url + "/v1/claim", headers=SESSION, json=claim, timeout=10).status_code == 200
        other = {"session": "s2", "namespace": "ns", "token": "another-token-0123456789"}
        r = requests.post(url + "/v1/claim", headers=SESSION, json=other, timeout=10)
        assert r.status_code == 409 and r.json()["error"]["code"] == "claimed", r.text

        # The sidecar container restarts with the same flags and pool token
        # file: it comes back claimed, never warm.
        side.send_signal(signal.SIGKILL)
        side.wait()
        side = start_pod_sidecar(tmp_path, port, base, "--warm")
        wait_readyz(url, side)
        assert requests.get(url + "/v1/status", headers=POOL, timeout=10).status_code == 401
        e = Session(url).run("z")
        assert text_of(e) == "42", e
        assert mcp_initialize(url, "s1.ns.svc").status_code == 200, "the claim's host names survive a restart"
    finally:
        side.kill()
        if kernel:
            kernel.kill()


def start_kernel(tmp_path):
    """The kernel container: ipykernel on the connection file the sidecar writes."""
    conn = tmp_path / "run" / "kernel.json"
    deadline = time.monotonic() + 10
    while not conn.exists():
        assert time.monotonic() < deadline, "connection file never written"
        time.sleep(0.02)
    return subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", str(conn)],
                            stdout=open(tmp_path / "kernel.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def secrets(tmp_path):
    (tmp_path / "token").write_text("pool-token-0123456789\n")
    (tmp_path / "kernel-key").write_text("0123456789abcdef\n")


def status(url, headers=POOL):
    r = requests.get(url + "/v1/status", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_warmup_runs_before_ready_and_the_claimed_session_sees_its_effect_but_none_of_its_history(tmp_path):
    secrets(tmp_path)
    gate = tmp_path / "gate"
    # The warmup waits for the test to open the gate: until then it is running,
    # which the sidecar must not take for ready.
    warmup = (f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n"
              "print('warming up')\nwarmed = 6 * 7\nwarmed")
    port, base = free_port(), free_port_block(5)
    url = f"http://127.0.0.1:{port}"
    side = start_pod_sidecar(tmp_path, port, base, "--warm", "--warmup", warmup)
    kernel = None
    try:
        kernel = start_kernel(tmp_path)
        deadline = time.monotonic() + 60
        while True:
            assert side.poll() is None, "sidecar exited"
            s = status(url)
            if s["kernel"]["state"] in ("idle", "busy") and s.get("warmup", {}).get("state") == "running":
                break
            assert time.monotonic() < deadline, s
            time.sleep(0.05)
        # The kernel answers, the warmup runs: not ready, and /readyz says why.
        r = requests.get(url + "/readyz", timeout=10)
        assert r.status_code == 503 and "warmup running" in r.text, (r.status_code, r.text)
        assert status(url)["ready"] is False
        gate.write_text("open")
        wait_readyz(url, side)
        s = status(url)
        assert s["ready"] is True and s["warmup"] == {"state": "done"}, s
        assert s["queue"] == {"queued": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}, s

        claim_for_s1(url)

        # The session's history starts empty ...
        r = requests.get(url + "/v1/executions", headers=SESSION, timeout=10)
        assert r.status_code == 200 and r.json()["executions"] == [], r.text
        # ... and the warmup's variable is there, its own first execution is In [1].
        e = Session(url).run("warmed")
        eid = e["id"]
        assert text_of(e) == "42", e
        assert e["execution_count"] == 1, "the warmup did not count as an execution of the session"
        listed = requests.get(url + "/v1/executions", headers=SESSION, timeout=10).json()["executions"]
        assert [x["id"] for x in listed] == [eid], listed
        assert "warming up" not in json.dumps(listed)

        # The event stream from its start holds this execution's events only.
        newest = status(url, SESSION)["events"]["newest_seq"]
        events = []
        with requests.get(url + "/v1/events", params={"since": 0}, headers=SESSION, stream=True, timeout=30) as r:
            assert r.status_code == 200, r.text
            block = b""
            for line in r.iter_lines():
                if line:
                    block += line + b"\n"
                    continue
                ev = sse_event(block.rstrip(b"\n"))
                block = b""
                if ev is None:
                    continue
                events.append(ev[1])
                if ev[0] >= newest:
                    break
        assert events, "the execution's events are in the stream"
        assert all(ev.get("execution_id") == eid for ev in events), events
        assert "warming up" not in json.dumps(events)
    finally:
        side.kill()
        if kernel:
            kernel.kill()


def test_a_failing_warmup_keeps_the_sidecar_not_ready_and_says_why(tmp_path):
    secrets(tmp_path)
    port, base = free_port(), free_port_block(5)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "termination-log"
    os.environ["NOTEBOOK_TERMINATION_LOG"] = str(log)
    try:
        side = start_pod_sidecar(tmp_path, port, base, "--warm", "--warmup", "import no_such_module_nbo")
    finally:
        del os.environ["NOTEBOOK_TERMINATION_LOG"]
    kernel = None
    why = "warmup failed: ModuleNotFoundError: No module named 'no_such_module_nbo'"
    try:
        kernel = start_kernel(tmp_path)
        # The sidecar exits once, leaving why where the kubelet reads the
        # container's termination message (lastState.terminated.message).
        assert side.wait(timeout=60) != 0
        assert log.read_text() == why
        # Restarted by the kubelet on the same state: up, never ready, and
        # saying why on /readyz and /v1/status; the warmup is not run again.
        side = start_pod_sidecar(tmp_path, port, base, "--warm", "--warmup", "import no_such_module_nbo")
        deadline = time.monotonic() + 30
        while True:
            assert side.poll() is None, "the restarted sidecar stays up"
            try:
                r = requests.get(url + "/readyz", timeout=1)
                if r.status_code == 503 and why in r.text:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "readyz never said why"
            time.sleep(0.05)
        # Still so once the kernel answers again: the warmup is what keeps it not ready.
        while (s := status(url))["kernel"]["state"] != "idle":
            assert time.monotonic() < deadline, s
            time.sleep(0.05)
        assert s["ready"] is False and s["warmup"] == {"state": "failed", "error": why.split(": ", 1)[1]}, s
        assert side.poll() is None
        r = requests.get(url + "/readyz", timeout=10)
        assert r.status_code == 503 and why in r.text, r.text
    finally:
        side.kill()
        if kernel:
            kernel.kill()


def wait_not_ready(url, side, timeout=30):
    deadline = time.monotonic() + timeout
    while requests.get(url + "/readyz", timeout=5).status_code == 200:
        assert side.poll() is None, "sidecar exited"
        assert time.monotonic() < deadline, "never saw the kernel go"
        time.sleep(0.05)


WARMUP_COUNTING = "warmed = 6 * 7\ntry:\n    runs += 1\nexcept NameError:\n    runs = 1"


def test_a_warm_kernel_that_restarts_is_warmed_again_and_a_claimed_one_is_not(tmp_path):
    secrets(tmp_path)
    port, base = free_port(), free_port_block(5)
    url = f"http://127.0.0.1:{port}"
    side = start_pod_sidecar(tmp_path, port, base, "--warm", "--warmup", WARMUP_COUNTING)
    kernel = None
    try:
        kernel = start_kernel(tmp_path)
        wait_readyz(url, side)
        # The sidecar container restarts first (its warmup stays armed).
        side.send_signal(signal.SIGKILL)
        side.wait()
        side = start_pod_sidecar(tmp_path, port, base, "--warm", "--warmup", WARMUP_COUNTING)
        wait_readyz(url, side)
        # The warm pod's kernel dies and its container comes back: the new
        # kernel runs the warmup before the pod is ready again.
        kernel.kill()
        kernel.wait()
        wait_not_ready(url, side)
        kernel = start_kernel(tmp_path)
        wait_readyz(url, side)
        assert status(url)["warmup"] == {"state": "done"}
        claim_for_s1(url)
        e = Session(url).run("warmed, runs")
        assert text_of(e) == "(42, 1)" and e["execution_count"] == 1, e

        # Claimed: the kernel is the session's, and one that restarts is a plain kernel.
        kernel.kill()
        kernel.wait()
        wait_not_ready(url, side)
        kernel = start_kernel(tmp_path)
        wait_readyz(url, side)
        e = Session(url).run("'warmed' in dir()")
        assert text_of(e) == "False", e
    finally:
        side.kill()
        if kernel:
            kernel.kill()


def test_a_restarted_warm_sidecar_does_not_run_the_warmup_twice_in_the_same_kernel(tmp_path):
    secrets(tmp_path)
    port, base = free_port(), free_port_block(5)
    url = f"http://127.0.0.1:{port}"
    side = start_pod_sidecar(tmp_path, port, base, "--warm", "--warmup", WARMUP_COUNTING)
    kernel = None
    try:
        kernel = start_kernel(tmp_path)
        wait_readyz(url, side)
        side.send_signal(signal.SIGKILL)
        side.wait()
        side = start_pod_sidecar(tmp_path, port, base, "--warm", "--warmup", WARMUP_COUNTING)
        wait_readyz(url, side)
        assert status(url)["warmup"] == {"state": "done"}
        claim_for_s1(url)
        e = Session(url).run("runs")
        assert text_of(e) == "1", e
    finally:
        side.kill()
        if kernel:
            kernel.kill()
