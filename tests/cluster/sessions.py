"""Helpers for tier-4 tests about NotebookSessions: create, wait, and talk to
the session's sidecar the way an agent in the cluster would (pod IP, token
from the session Secret)."""
from __future__ import annotations

import base64
import datetime
import time

import requests

from harness import SidecarHttp
from kube import Kube, path

READY_TIMEOUT = 180  # a sidecar and an ipykernel start on a busy 2-core machine


def session_obj(ns: str, name: str, **spec) -> dict:
    spec.setdefault("kernel", {"image": "quay.io/jupyter/base-notebook:latest"})
    return {"apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def create_session(kube: Kube, ns: str, name: str, **spec) -> dict:
    return kube.create(path("NotebookSession", ns), session_obj(ns, name, **spec))


def get_session(kube: Kube, ns: str, name: str) -> dict | None:
    return kube.get_opt(path("NotebookSession", ns, name))


def patch_session(kube: Kube, ns: str, name: str, patch: dict) -> dict:
    return kube.patch(path("NotebookSession", ns, name), patch)


def phase(s: dict | None) -> str | None:
    return (s or {}).get("status", {}).get("phase")


def cond(s: dict | None, type_: str) -> dict:
    for c in (s or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


def wait_session(kube: Kube, ns: str, name: str, predicate, timeout: float = 60, what: str = "") -> dict | None:
    return kube.wait_for("NotebookSession", ns, name, predicate, timeout, what or f"session {ns}/{name}")


def wait_phase(kube: Kube, ns: str, name: str, want: str, timeout: float = READY_TIMEOUT) -> dict:
    return wait_session(kube, ns, name, lambda s: phase(s) == want, timeout, f"session {ns}/{name} {want}")


def wait_ready(kube: Kube, ns: str, name: str, timeout: float = READY_TIMEOUT) -> dict:
    """Phase Ready with the Ready condition True and the pod known."""
    return wait_session(kube, ns, name, lambda s: phase(s) == "Ready" and cond(s, "Ready").get("status") == "True"
                        and s["status"].get("podName"), timeout, f"session {ns}/{name} Ready")


def wait_until(predicate, timeout: float, step: float = 0.01, what: str = "") -> float:
    """Polls predicate (for what no watch shows: a file, a metric); returns
    the time it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(step)
    return time.time()


def parse_time(text: str) -> float:
    """RFC 3339 -> epoch seconds."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SidecarApi(SidecarHttp):
    """The sidecar of a session's current pod, reached by pod IP with the
    session token, as the operator and in-cluster agents reach it."""

    def __init__(self, kube: Kube, ns: str, name: str):
        s = kube.get(path("NotebookSession", ns, name))
        secret = kube.get(path("Secret", ns, s["status"]["tokenSecretName"]))
        self.token = base64.b64decode(secret["data"]["token"]).decode().strip()
        pod = kube.get(path("Pod", ns, s["status"]["podName"]))
        self.pod_uid = pod["metadata"]["uid"]
        self.ip = pod["status"]["podIP"]
        port = pod["spec"]["initContainers"][0]["ports"][0]["containerPort"]
        self.url = f"http://{self.ip}:{port}"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def wait_state(self, eid: str, states: tuple, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            e = self.get(eid)
            if e["state"] in states or time.monotonic() > deadline:
                return e
            time.sleep(0.05)

    def mcp_initialize(self) -> dict:
        """An MCP `initialize` with the official SDK at `http://<podIP>:<port>/mcp`
        (so `Host` is the pod IP and port), as an in-cluster agent sends it;
        the server's info."""
        import anyio
        from mcp.client.session import ClientSession
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        async def main():
            with anyio.fail_after(60):
                async with create_mcp_http_client(headers={"Authorization": f"Bearer {self.token}"}) as http:
                    async with streamable_http_client(self.url + "/mcp", http_client=http) as (read, write):
                        async with ClientSession(read, write) as session:
                            init = await session.initialize()
                            tools = await session.list_tools()
                            return {"server": init.server_info.name, "tools": [t.name for t in tools.tools]}
        return anyio.run(main)

    def mcp_post_initialize(self, host: str) -> requests.Response:
        """A bare MCP `initialize` POST to the pod IP with the session token
        and `Host: host`."""
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "tier4", "version": "0"}}}
        return self.http.post(self.url + "/mcp", json=body, timeout=30,
                              headers={"Host": host, "Accept": "application/json, text/event-stream"})

    def assert_mcp_by_pod_ip(self):
        """MCP by pod IP is served (with and without the port in `Host`); a
        foreign `Host` is still refused, a DNS-rebinding guard."""
        served = self.mcp_initialize()
        assert "execute" in served["tools"], served
        port = self.url.rsplit(":", 1)[1]
        for host in (f"{self.ip}:{port}", self.ip):
            r = self.mcp_post_initialize(host)
            assert r.status_code == 200, (host, r.status_code, r.text)
        for host in ("evil.example", f"evil.example:{port}"):
            r = self.mcp_post_initialize(host)
            assert r.status_code == 403, (host, r.status_code, r.text)

    def status(self) -> dict:
        r = self.http.get(self.url + "/v1/status", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()
