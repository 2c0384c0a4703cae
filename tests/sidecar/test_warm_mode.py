"""Tier 2: the sidecar of a warm pool pod (`sidecar --warm`) against a real
ipykernel. Until a session claims it, it serves only /v1/status and the
claim, and only with the pool's token; `POST /v1/claim` swaps that token for
the session's own, at once and for good (also across a sidecar restart); a
repeat of the same claim answers 200, any other 409."""
import signal
import subprocess
import sys
import time

import requests

from harness import free_port, free_port_block, start_pod_sidecar, text_of, wait_readyz

POOL = {"Authorization": "Bearer pool-token-0123456789"}
SESSION_TOKEN = "session-token-abcdef0123456789"
SESSION = {"Authorization": f"Bearer {SESSION_TOKEN}"}


def mcp_initialize(url, host):
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "tier2", "version": "0"}}}
    return requests.post(url + "/mcp", json=body, timeout=10,
                         headers={**SESSION, "Host": host, "Accept": "application/json, text/event-stream"})


def test_a_warm_sidecar_serves_nothing_until_claimed_then_only_the_session_token(tmp_path):
    (tmp_path / "token").write_text("pool-token-0123456789\n")
    (tmp_path / "kernel-key").write_text("0123456789abcdef\n")
    port, base = free_port(), free_port_block(5)
    url = f"http://127.0.0.1:{port}"
    side = start_pod_sidecar(tmp_path, port, base, "--warm")
    kernel = None
    try:
        conn = tmp_path / "run" / "kernel.json"
        deadline = time.monotonic() + 10
        while not conn.exists():
            assert time.monotonic() < deadline, "connection file never written"
            time.sleep(0.02)
        kernel = subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", str(conn)],
                                  stdout=open(tmp_path / "kernel.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
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
        r = requests.post(url + "/v1/executions", json={"code": "z"}, headers=SESSION, timeout=10)
        e = requests.get(f"{url}/v1/executions/{r.json()['id']}", params={"wait": 30}, headers=SESSION).json()
        assert text_of(e) == "42", e
        assert mcp_initialize(url, "s1.ns.svc").status_code == 200, "the claim's host names survive a restart"
    finally:
        side.kill()
        if kernel:
            kernel.kill()
