"""Shared helpers for the test tiers that run the real binary."""
import collections
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(os.environ.get("NBO_BIN", ROOT / "target" / "debug" / "notebook-operator"))
KERNEL_CMD = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(n: int = 5) -> int:
    """The first of n consecutive free loopback ports."""
    for _ in range(200):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                sock = socket.socket()
                sock.bind(("127.0.0.1", p))
                socks.append(sock)
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


class SidecarHttp:
    """The sidecar's execution API, for any object with `url` and `http`
    (a requests.Session that sends the bearer token)."""

    def submit(self, code: str, **kw) -> dict:
        r = self.http.post(self.url + "/v1/executions", json={"code": code, **kw}, timeout=30)
        assert r.status_code in (200, 202), r.text
        return r.json()

    def get(self, eid: str, wait: float = 0) -> dict:
        r = self.http.get(f"{self.url}/v1/executions/{eid}", params={"wait": wait}, timeout=wait + 30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_final(self, eid: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            e = self.get(eid, wait=max(0.0, min(left, 30)))
            if e["state"] in ("completed", "failed", "cancelled") or left <= 0:
                return e

    def run(self, code: str, timeout: float = 60, **kw) -> dict:
        return self.wait_final(self.submit(code, **kw)["id"], timeout)


class Sidecar(SidecarHttp):
    """The real binary in `local` mode, on loopback, with its own data dir."""

    def __init__(self, root: pathlib.Path, *extra: str, token: str = "test-token"):
        if not BIN.exists():
            raise RuntimeError(f"{BIN} is missing: run cargo build first")
        self.root = root
        self.data_dir = root / "data"
        self.workspace = root / "ws"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = token
        self.extra = list(extra)
        self.proc = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.starts = 0
        self.popen_kw = {}
        self.kernel_cmd = KERNEL_CMD

    # -- process ---------------------------------------------------------
    def start(self, timeout: float = 90.0) -> "Sidecar":
        self.starts += 1
        log = open(self.root / f"sidecar-{self.starts}.log", "wb")
        args = [str(BIN), "local", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir),
                "--workspace", str(self.workspace), "--token", self.token, *self.extra,
                "--kernel-cmd", *self.kernel_cmd]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     **self.popen_kw)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"sidecar not ready after {timeout}s: {self.log()[-3000:]}")

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("sidecar-*.log")))

    def kill9(self):
        """kill -9 of the sidecar alone: the kernel process survives."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 40.0):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        """Stops the sidecar and, in case it could not, its kernel."""
        self.stop()
        try:
            os.kill(self.kernel_pid(), signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def kernel_pid(self) -> int:
        return int((self.data_dir / "kernel.pid").read_text())

    def kill_kernel(self):
        pid = self.kernel_pid()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kernel(self) -> dict:
        return self.http.get(self.url + "/v1/kernel", timeout=10).json()


def start_pod_sidecar(tmp: pathlib.Path, port: int, base_port: int, *extra: str) -> subprocess.Popen:
    """The `sidecar` subcommand as it runs in a pod (the Secret's two files in
    `tmp`, a connection file for the kernel container), logging to
    `tmp/sidecar.log`; `extra` flags such as `--warm` go after the command."""
    log = open(tmp / "sidecar.log", "ab")
    return subprocess.Popen(
        [str(BIN), "sidecar", *extra, "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "state"),
         "--workspace", str(tmp / "ws"), "--connection-file", str(tmp / "run" / "kernel.json"),
         "--token-file", str(tmp / "token"), "--kernel-key-file", str(tmp / "kernel-key"),
         "--kernel-base-port", str(base_port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_readyz(url: str, proc: subprocess.Popen, timeout: float = 60):
    """Until `url`/readyz answers 200; fails at once if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "sidecar exited"
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError("sidecar never became ready")


def text_of(execution: dict) -> str:
    """All stream text and text/plain results of an execution."""
    parts = []
    for o in execution["outputs"]:
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif "data" in o:
            parts.append(o["data"].get("text/plain", ""))
    return "".join(parts)


def sse_event(block: bytes):
    """One SSE event block (without its blank line) as (id, data as JSON),
    or None for a block without data (a comment, a keep-alive)."""
    ev_id, data = None, []
    for line in block.decode().split("\n"):
        if line.startswith("id:"):
            ev_id = int(line[3:].strip())
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return (ev_id, json.loads("\n".join(data))) if data else None


def check_exactly_once(acked: list, executions: list, ran: "collections.Counter", n: int, kills: int):
    """The verdict of a kill -9 run (guarantees 1 and 2): every one of the `n`
    keys a submitter saw acknowledged (`acked`, its JSON lines) has exactly one
    execution, the first made with it, in a final state; no key's side effect
    (`ran`, counted from the file each execution appends its key to) happened
    twice, and every completed one happened exactly once; at most one
    execution per kill failed, and only for a reason a kill explains.
    Returns the completed and failed keyed executions."""
    keyed = [e for e in executions if e.get("key")]
    by_key = collections.defaultdict(list)
    for e in keyed:
        by_key[e["key"]].append(e)
    assert len({a["key"] for a in acked}) == n, "every key was acknowledged"
    for a in acked:
        rows = by_key[a["key"]]
        assert len(rows) == 1, f"{a['key']} has {len(rows)} executions"
        assert rows[0]["id"] == a["id"], "a repeated key returns the first execution"
        assert rows[0]["state"] in ("completed", "failed"), rows[0]
    assert max(ran.values()) == 1, f"ran twice: {[k for k, c in ran.items() if c > 1]}"
    failed = [e for e in keyed if e["state"] == "failed"]
    for e in failed:
        assert e["reason"] in ("interrupted", "kernel_died", "kernel_restarted"), e
    completed = [e for e in keyed if e["state"] == "completed"]
    for e in completed:
        assert ran[e["key"]] == 1, f"{e['key']} completed but did not run exactly once"
    assert len(failed) <= kills, f"{len(failed)} failed for {kills} kills"
    return completed, failed
