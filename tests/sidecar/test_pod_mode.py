"""Tier 2: the `sidecar` subcommand as it runs in a pod: it writes the
connection file (fixed ports, key from a file), the kernel starts afterwards
from that file, as the kernel container would, and the sidecar reattaches
across its own restarts."""
import os
import signal
import subprocess
import sys
import time

import requests

from harness import BIN, free_port, free_port_block, start_pod_sidecar, text_of, wait_readyz


AUTH = {"Authorization": "Bearer pod-token"}


def first_start(tmp):
    """The session Secret's two files, free ports, and the sidecar started on them."""
    (tmp / "token").write_text("pod-token\n")
    (tmp / "kernel-key").write_text("0123456789abcdef\n")
    port, base = free_port(), free_port_block(5)
    return start_pod_sidecar(tmp, port, base), port, base


def test_sidecar_writes_the_connection_file_and_waits_for_the_kernel(tmp_path):
    side, port, base = first_start(tmp_path)
    url, h = f"http://127.0.0.1:{port}", AUTH
    kernel = None
    try:
        conn = tmp_path / "run" / "kernel.json"
        deadline = time.monotonic() + 10
        while not conn.exists():
            assert time.monotonic() < deadline, "connection file never written"
            time.sleep(0.02)
        while True:
            try:
                requests.get(url + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "sidecar never listened"
                time.sleep(0.02)
        assert requests.get(url + "/readyz").status_code == 503, "not ready before the kernel"
        kernel = subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", str(conn)],
                                  stdout=open(tmp_path / "kernel.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        wait_readyz(url, side)
        r = requests.post(url + "/v1/executions", json={"code": "y = 7; y * 6"}, headers=h)
        assert r.status_code == 202
        e = requests.get(f"{url}/v1/executions/{r.json()['id']}", params={"wait": 30}, headers=h).json()
        assert text_of(e) == "42"
        # The sidecar container restarts; the kernel container keeps running.
        side.send_signal(signal.SIGKILL)
        side.wait()
        side = start_pod_sidecar(tmp_path, port, base)
        wait_readyz(url, side)
        r = requests.post(url + "/v1/executions", json={"code": "y"}, headers=h)
        e = requests.get(f"{url}/v1/executions/{r.json()['id']}", params={"wait": 30}, headers=h).json()
        assert text_of(e) == "7", e
    finally:
        side.kill()
        if kernel:
            kernel.kill()


def test_sidecar_refuses_to_start_without_a_token(tmp_path):
    r = subprocess.run([str(BIN), "sidecar", "--data-dir", str(tmp_path), "--kernel-key", "k"],
                       capture_output=True, text=True, timeout=30, env={**os.environ, "NOTEBOOK_TOKEN": ""})
    assert r.returncode != 0
    assert "token" in r.stderr


def test_a_kernel_container_restarted_within_the_heartbeat_timeout_fails_the_running_execution(tmp_path):
    """In a pod the kubelet restarts a killed kernel (OOMKilled) within about a
    second, on the same ports: faster than the heartbeat can miss. The sidecar
    must still see that its kernel went (the connection closed), fail what
    ran with `kernel_died`, say not-ready while the kernel is away, and run
    the next execution on the new kernel."""
    side, port, base = first_start(tmp_path)
    url, h = f"http://127.0.0.1:{port}", AUTH
    conn = tmp_path / "run" / "kernel.json"
    kernels = []

    def start_kernel():
        kernels.append(subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", str(conn)],
                                        stdout=open(tmp_path / "kernel.log", "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True))
    try:
        deadline = time.monotonic() + 10
        while not conn.exists():
            assert time.monotonic() < deadline, "connection file never written"
            time.sleep(0.02)
        start_kernel()
        wait_readyz(url, side)
        r = requests.post(url + "/v1/executions", json={"code": "kept = 1"}, headers=h)
        assert requests.get(f"{url}/v1/executions/{r.json()['id']}", params={"wait": 30},
                            headers=h).json()["state"] == "completed"
        r = requests.post(url + "/v1/executions", json={"code": "import time; time.sleep(120)"}, headers=h)
        eid = r.json()["id"]
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/v1/executions/{eid}", headers=h).json()["state"] != "running":
            assert time.monotonic() < deadline, "the long execution never started"
            time.sleep(0.05)

        # The runtime kills the kernel; its successor starts at once.
        kernels[-1].send_signal(signal.SIGKILL)
        kernels[-1].wait()
        start_kernel()

        saw_not_ready = False
        deadline = time.monotonic() + 30
        while True:
            saw_not_ready |= requests.get(url + "/readyz", timeout=2).status_code == 503
            e = requests.get(f"{url}/v1/executions/{eid}", headers=h).json()
            if e["state"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, f"the execution outlived its kernel: {e}"
            time.sleep(0.02)
        assert e["state"] == "failed" and e.get("reason") == "kernel_died", e
        wait_readyz(url, side)
        kernel = requests.get(url + "/v1/kernel", headers=h).json()
        assert kernel["state"] in ("idle", "busy") and kernel["restarts"] >= 1, kernel
        assert saw_not_ready, "the sidecar never said it was not ready while its kernel was away"
        r = requests.post(url + "/v1/executions", json={"code": "'kept' in dir()"}, headers=h)
        after = requests.get(f"{url}/v1/executions/{r.json()['id']}", params={"wait": 30}, headers=h).json()
        assert after["state"] == "completed" and text_of(after) == "False", after
    finally:
        side.kill()
        for k in kernels:
            k.kill()
