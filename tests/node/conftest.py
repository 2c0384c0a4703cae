"""Tier 5: a real node. One node per test session (tests/node/up: the control
plane, containerd, runc, CNI, kubelet, kube-proxy and the locally built
images; tests/node/down at the end), the chart installed once with `helm
install` and those images, and a fresh namespace per test, enforcing Pod
Security `restricted`. When a test fails, what its namespace holds, its
events, the container logs and the kubelet's lines about it are printed.

Nothing here skips: a missing tool, binary or image fails the tier.

NBO_TIER5_REUSE=DIR uses a node started with `tests/node/up DIR` and leaves
it (and the chart) in place.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import anyio
import pytest
import requests

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
sys.path.insert(0, str(ROOT / "tests"))

from kube import Kube, path, namespace_for_test  # noqa: E402

RELEASE = "nbo"
OPERATOR_NS = "nbo-system"
FULLNAME = f"{RELEASE}-notebook-operator"
GATEWAY = f"{FULLNAME}-gateway"
STATUS_INTERVAL = "10m"  # the fallback read, out of reach: status changes arrive by the sidecar's long poll
READY_TIMEOUT = 180
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def log(msg: str):
    print(f"[tier5 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


class Node:
    """The node tests/node/up started: its env, kubectl and helm."""

    def __init__(self, state: pathlib.Path):
        self.state = state
        self.env = dict(line.split("=", 1) for line in (state / "env").read_text().split("\n") if "=" in line)
        self.kubeconfig = pathlib.Path(self.env["KUBECONFIG"])
        self.bin = pathlib.Path(self.env["NBO_K8S_BIN"])
        self.kernel_image = self.env["NBO_KERNEL_IMAGE"]
        self.operator_image = self.env["NBO_OPERATOR_IMAGE"]
        self.kubelet_log = pathlib.Path(self.env["NBO_KUBELET_LOG"])

    def run(self, tool: str, *args, input: str | None = None, timeout: float = 120, check: bool = True) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        p = subprocess.run([str(self.bin / tool), *map(str, args)], input=input, capture_output=True, text=True,
                           timeout=timeout, env=env)
        if check and p.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p.stdout

    def kubectl(self, *args, **kw) -> str:
        return self.run("kubectl", *args, **kw)

    def helm(self, *args, **kw) -> str:
        return self.run("helm", *args, **kw)


def _tail(p: pathlib.Path, n: int = 40) -> str:
    try:
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return str(e)


@pytest.fixture(scope="session")
def node(request):
    reuse = os.environ.get("NBO_TIER5_REUSE")
    state = pathlib.Path(reuse or os.environ.get("NBO_NODE_STATE", "/tmp/nbo-node"))
    t0 = time.monotonic()
    if not reuse:
        # The image gets a copy of the binary: another build may rewrite
        # target/ while the image is made.
        src = pathlib.Path(os.environ.get("NBO_BIN", ROOT / "target" / "debug" / "notebook-operator"))
        assert src.is_file(), f"no binary at {src}: cargo build first"
        cache = pathlib.Path(os.environ.get("NBO_CACHE", pathlib.Path.home() / ".cache" / "notebook-operator"))
        copy = cache / "node" / "bin" / "notebook-operator"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, copy.with_suffix(".tmp"))
        os.replace(copy.with_suffix(".tmp"), copy)
        up_log = pathlib.Path(f"/tmp/nbo-node-up-{os.getpid()}.log")
        with open(up_log, "w") as f:
            p = subprocess.run([str(HERE / "up"), str(state)], stdout=subprocess.PIPE, stderr=f, text=True,
                               timeout=1800, env={**os.environ, "NBO_BIN": str(copy)})
        assert p.returncode == 0, f"tests/node/up failed ({p.returncode}):\n{_tail(up_log, 80)}"
        assert p.stdout.strip().splitlines()[-1].endswith("admin.kubeconfig"), p.stdout
        log(f"node up in {time.monotonic() - t0:.1f}s ({up_log})")
    n = Node(state)
    yield n
    if request.session.testsfailed:
        for name in ("kubelet", "containerd", "kube-proxy"):
            log(f"{name} log (last 40 lines):\n{_tail(state / 'logs' / f'{name}.log')}")
    if not reuse:
        t1 = time.monotonic()
        p = subprocess.run([str(HERE / "down"), str(state)], capture_output=True, text=True, timeout=300)
        log(f"node down in {time.monotonic() - t1:.1f}s (rc {p.returncode})")
        assert p.returncode == 0, f"tests/node/down failed:\n{p.stderr[-5000:]}"


@pytest.fixture(scope="session")
def kube(node) -> Kube:
    return Kube.from_kubeconfig(node.kubeconfig, node.state / "client-admin")


def wait_namespace_sa(kube: Kube, name: str):
    kube.wait_for("ServiceAccount", name, "default", lambda o: o is not None, timeout=60,
                  what=f"serviceaccount {name}/default")


@pytest.fixture(scope="session")
def chart(node, kube):
    """The chart from charts/notebook-operator, installed with helm into a
    namespace enforcing restricted, with the local images (pull policy Never:
    nothing is ever pulled)."""
    repo, tag = node.operator_image.rsplit(":", 1)
    values = [f"image.repository={repo}", f"image.tag={tag}", "image.pullPolicy=Never",
              f"defaultKernelImage={node.kernel_image}", "kernelImagePullPolicy=Never", f"statusInterval={STATUS_INTERVAL}",
              "assetLeaseGrace=5s", "logLevel=info\\,notebook_operator=debug"]
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS, "labels": RESTRICTED}})
    wait_namespace_sa(kube, OPERATOR_NS)
    t0 = time.monotonic()
    args = ["upgrade", "--install", RELEASE, str(ROOT / "charts" / "notebook-operator"), "-n", OPERATOR_NS,
            "--wait", "--timeout", "180s"]
    for v in values:
        args += ["--set", v]
    node.helm(*args, timeout=240)
    log(f"helm install --wait: {time.monotonic() - t0:.1f}s")
    yield {"values": values, "install_s": time.monotonic() - t0}


def dump_namespace(node: Node, kube: Kube, ns: str) -> str:
    out = [f"===== namespace {ns} =====", *kube.describe(ns, ("NotebookSession", "Pod", "PersistentVolumeClaim", "AssetLease"))]
    out.append("--- events\n" + node.kubectl("-n", ns, "get", "events", "--sort-by=.lastTimestamp", check=False))
    for pod in kube.list(path("Pod", ns)):
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            for prev in ("", "--previous"):
                text = node.kubectl("-n", ns, "logs", pod["metadata"]["name"], "-c", c["name"], "--tail=40",
                                    *([prev] if prev else []), check=False)
                if text:
                    out.append(f"--- logs {pod['metadata']['name']}/{c['name']} {prev}\n{text}")
    lines = [line for line in node.kubelet_log.read_text(errors="replace").splitlines() if ns in line]
    out.append("--- kubelet (lines naming the namespace)\n" + "\n".join(lines[-80:]))
    op = node.kubectl("-n", OPERATOR_NS, "logs", f"deploy/{FULLNAME}", "--tail=2000", check=False)
    out.append("--- operator (lines naming the namespace)\n" + "\n".join(
        [line for line in op.splitlines() if ns in line][-80:]))
    return "\n".join(out)


class Namespace(str):
    node: Node
    kube: Kube


@pytest.fixture
def ns(request, node, kube, chart):
    """A fresh namespace enforcing restricted Pod Security."""
    name = namespace_for_test(request.node.name)
    kube.create(path("Namespace"), {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": name, "labels": {"nbo.test/tier5": "true", **RESTRICTED}}})
    wait_namespace_sa(kube, name)
    n = Namespace(name)
    n.node, n.kube = node, kube
    yield n
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        text = dump_namespace(node, kube, name)
        dump = node.state / "logs" / "dumps" / f"{name}.txt"
        dump.parent.mkdir(parents=True, exist_ok=True)
        dump.write_text(text)
        print(f"\n[tier5] dump of {name} (also in {dump}):\n{text[-60000:]}")
    kube.delete(path("Namespace", None, name))


# -- helpers --------------------------------------------------------------------------------
def session_token(kube: Kube, ns: str, name: str) -> str:
    s = kube.get(path("NotebookSession", ns, name))
    secret = kube.get(path("Secret", ns, s["status"]["tokenSecretName"]))
    return base64.b64decode(secret["data"]["token"]).decode().strip()


def service_url(kube: Kube, ns: str, name: str, port_name: str | None = None) -> str:
    svc = kube.get(path("Service", ns, name))
    ports = svc["spec"]["ports"]
    port = next((p for p in ports if port_name is None or p.get("name") == port_name), ports[0])["port"]
    return f"http://{svc['spec']['clusterIP']}:{port}"


class Api:
    """A session's sidecar API at a base URL (its Service, or the gateway's
    forwarding path), with a bearer token."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def submit(self, code: str, **kw) -> dict:
        r = self.http.post(self.url + "/v1/executions", json={"code": code, **kw}, timeout=30)
        assert r.status_code in (200, 202), r.text
        return r.json()

    def get(self, eid: str, wait: float = 0) -> dict:
        r = self.http.get(f"{self.url}/v1/executions/{eid}", params={"wait": wait} if wait else None,
                          timeout=wait + 30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_final(self, eid: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            e = self.get(eid, wait=min(30, max(1, deadline - time.monotonic())))
            if e["state"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                return e

    def run(self, code: str, timeout: float = 120, **kw) -> dict:
        return self.wait_final(self.submit(code, **kw)["id"], timeout)

    def executions(self) -> list[dict]:
        r = self.http.get(self.url + "/v1/executions", params={"limit": 1000}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["executions"]


@contextlib.asynccontextmanager
async def mcp_at(url: str, token: str):
    """An initialized MCP ClientSession (the official SDK) at url."""
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                with anyio.fail_after(60):
                    await session.initialize()
                yield session


def mcp_calls(url: str, token: str, steps: list[tuple[str, dict]], timeout: float = 180) -> list:
    async def main():
        out = []
        with anyio.fail_after(timeout):
            async with mcp_at(url, token) as session:
                for name, args in steps:
                    out.append(await session.call_tool(name, args))
        return out
    return anyio.run(main)


def tool_json(result) -> dict:
    texts = [c.text for c in result.content if c.type == "text"]
    assert not result.is_error, texts
    if isinstance(result.structured_content, dict):
        return result.structured_content
    return json.loads(texts[0])
