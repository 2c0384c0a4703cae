"""Tier 4: the gateway's Jupyter Server REST API (issue 15, the REST half).

A real jupyter_server runs with `--gateway-url` pointing at the gateway and
an agent's Kubernetes token as its `GatewayClient.auth_token` (sent, as
jupyter_server does by default, as `Authorization: token <t>`); what a
Jupyter client does through jupyter_server's own REST API becomes
NotebookSessions in the cluster, run by the operator and the stand-in
kubelet. Direct requests check the refusals: 401, 403, 404 and 400, in
Jupyter's error shape `{"message", "reason"}`.

The kernel channels (WebSocket) are tested with the sidecar's channel route.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
import subprocess
import sys
import time
import uuid

import pytest
import requests

from harness import free_port
from kube import path
from sessions import READY_TIMEOUT, get_session, wait_ready
from test_gateway import Agent, gateway_held_its_rbac, ns_b, sessions_in, wait_gone  # noqa: F401 (fixtures)
from test_pools import create_pool

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MODEL_FIELDS = {"id", "name", "last_activity", "execution_state", "connections"}
STATES = {"starting", "idle", "busy", "restarting", "dead", "unknown"}


def check_model(m: dict) -> dict:
    """A kernel model as jupyter_server's GatewayClient and JupyterLab read it."""
    assert MODEL_FIELDS <= set(m), m
    assert UUID.match(m["id"]), m
    datetime.datetime.strptime(m["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert m["execution_state"] in STATES, m
    assert isinstance(m["connections"], int), m
    return m


def jupyter_error(r: requests.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body.get("message"), str) and isinstance(body.get("reason"), str), body
    for w in words:
        assert w.lower() in body["message"].lower(), (w, body)
    return body


def session_of_kernel(kube, ns, kernel_id: str) -> dict:
    found = [s for s in kube.list(path("NotebookSession", ns)) if s["metadata"]["uid"] == kernel_id]
    assert len(found) == 1, [s["metadata"]["name"] for s in kube.list(path("NotebookSession", ns))]
    return found[0]


@contextlib.contextmanager
def jupyter_server(gateway_url: str, token: str, root, timeout: float = 90):
    """jupyter_server (the pinned one, from the tests' venv) on a free
    loopback port with the gateway as its kernel gateway; yields its base
    URL and a requests session carrying its own token."""
    port = free_port()
    own = secrets.token_hex(16)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".cfg"), "JUPYTER_DATA_DIR": str(root / ".data"),
           "JUPYTER_RUNTIME_DIR": str(root / ".run"), "JUPYTER_PLATFORM_DIRS": "1",
           # Sent to the gateway in the kernel's env: how long a start may take.
           "KERNEL_LAUNCH_TIMEOUT": str(READY_TIMEOUT)}
    log_path = root / "jupyter-server.log"
    cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--ServerApp.token={own}", f"--ServerApp.root_dir={root}",
           f"--gateway-url={gateway_url}", f"--GatewayClient.auth_token={token}",
           f"--GatewayClient.request_timeout={READY_TIMEOUT + 20}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    http = requests.Session()
    http.headers["Authorization"] = f"token {own}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"jupyter_server exited {proc.returncode}:\n{log_path.read_text()[-5000:]}"
            try:
                if http.get(url + "/api/status", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"jupyter_server never answered:\n{log_path.read_text()[-5000:]}"
            time.sleep(0.2)
        http.log_path = log_path
        yield url, http
    except BaseException:
        print(f"\n[jupyter-server log]\n{log_path.read_text(errors='replace')[-8000:]}", file=sys.stderr)
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_a_real_jupyter_server_runs_its_kernels_as_notebook_sessions(ns, gateway, kube, tmp_path, capsys):
    """kernelspecs (the default and the agent's pool), start (a NotebookSession
    that is Ready before the answer), the model, interrupt and delete, all
    through jupyter_server's own REST API."""
    agent = Agent(ns, "jupyter")
    agent.grant(ns, "notebookpools", ["list"])
    create_pool(kube, ns, "jpool", 0)
    with jupyter_server(gateway.url, agent.token, tmp_path / "js") as (url, js):
        r = js.get(url + "/api/kernelspecs", timeout=60)
        assert r.status_code == 200, r.text
        specs = r.json()
        assert specs["default"] == "python3", specs
        assert {"python3", "jpool"} <= set(specs["kernelspecs"]), specs
        assert specs["kernelspecs"]["jpool"]["spec"]["language"] == "python", specs
        r = js.get(url + "/api/kernelspecs/jpool", timeout=60)
        assert r.status_code == 200 and r.json()["name"] == "jpool", r.text

        t0 = time.monotonic()
        r = js.post(url + "/api/kernels", json={"name": "python3"}, timeout=READY_TIMEOUT + 30)
        started_s = time.monotonic() - t0
        assert r.status_code == 201, (r.status_code, r.text, js.log_path.read_text()[-3000:])
        kernel = check_model(r.json())
        assert kernel["name"] == "python3", kernel
        # The kernel is a NotebookSession, Ready by the time the answer came.
        s = session_of_kernel(kube, ns, kernel["id"])
        name = s["metadata"]["name"]
        assert name.startswith("jupyter-"), name
        assert s["metadata"]["annotations"]["notebook.dev/requested-by"] == agent.username, s["metadata"]
        assert s["metadata"]["annotations"]["notebook.dev/jupyter-kernel-name"] == "python3", s["metadata"]
        assert "poolRef" not in s["spec"], s["spec"]
        wait_ready(kube, ns, name, timeout=5)

        r = js.get(f"{url}/api/kernels/{kernel['id']}", timeout=60)
        assert r.status_code == 200, r.text
        got = check_model(r.json())
        assert got["id"] == kernel["id"] and got["execution_state"] in ("idle", "busy"), got
        r = js.get(url + "/api/kernels", timeout=60)
        assert r.status_code == 200 and [k["id"] for k in r.json()] == [kernel["id"]], r.text

        r = js.post(f"{url}/api/kernels/{kernel['id']}/interrupt", timeout=60)
        assert r.status_code == 204, (r.status_code, r.text)

        r = js.delete(f"{url}/api/kernels/{kernel['id']}", timeout=120)
        assert r.status_code == 204, (r.status_code, r.text)
        wait_gone(kube, "NotebookSession", ns, name, timeout=120)
        r = js.get(f"{url}/api/kernels/{kernel['id']}", timeout=60)
        assert r.status_code == 404, (r.status_code, r.text)
    with capsys.disabled():
        print(f"\n[jupyter-api] POST /api/kernels through jupyter_server answered in {started_s:.1f}s "
              f"(the NotebookSession Ready)")


def test_refusals_come_in_jupyters_shape(ns, ns_b, gateway, kube):
    """401 without a token, `?token=` and `Authorization: token` work, 403
    without RBAC (before anything is created), 404 for an unknown kernel or
    spec, 400 for a bad body naming the field; the namespace prefix too."""
    agent = Agent(ns, "jclient")
    nobody = Agent(ns, "jnobody", verbs=[])
    base = gateway.url

    jupyter_error(requests.get(base + "/api/kernels", timeout=30), 401, "token")
    jupyter_error(requests.get(base + "/api/kernels", headers={"Authorization": "token not-a-token"}, timeout=30), 401)
    r = requests.get(base + "/api/kernels", params={"token": agent.token}, timeout=30)
    assert r.status_code == 200 and r.json() == [], r.text
    r = requests.get(base + "/api/kernelspecs", headers={"Authorization": f"token {agent.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    # No right to list pools: only the default spec, and no error.
    assert list(r.json()["kernelspecs"]) == ["python3"], r.json()
    r = requests.get(base + "/api", params={"token": agent.token}, timeout=30)
    assert r.status_code == 200 and r.json()["version"].startswith("2."), r.text

    as_nobody = {"Authorization": f"token {nobody.token}"}
    jupyter_error(requests.get(base + "/api/kernels", headers=as_nobody, timeout=30), 403, "list notebooksessions")
    jupyter_error(requests.post(base + "/api/kernels", headers=as_nobody, json={"name": "python3"}, timeout=30),
                  403, "create notebooksessions")
    jupyter_error(requests.get(base + "/api/sessions", headers=as_nobody, timeout=30), 403)
    assert sessions_in(kube, ns) == []

    http = agent.http()
    jupyter_error(http.get(f"{base}/api/kernels/{uuid.uuid4()}", timeout=30), 404, "kernel does not exist")
    jupyter_error(http.post(f"{base}/api/kernels/{uuid.uuid4()}/interrupt", timeout=30), 404)
    jupyter_error(http.delete(f"{base}/api/kernels/{uuid.uuid4()}", timeout=30), 404)
    jupyter_error(http.get(f"{base}/api/sessions/{uuid.uuid4()}", timeout=30), 404, "session not found")
    jupyter_error(http.get(base + "/api/kernelspecs/no-such-spec", timeout=30), 404, "no-such-spec")
    jupyter_error(http.post(base + "/api/kernels", json={"name": "no-such-spec"}, timeout=30), 404, "no-such-spec")
    jupyter_error(http.post(base + "/api/kernels", data="{", headers={"Content-Type": "application/json"},
                            timeout=30), 400, "body")
    jupyter_error(http.post(base + "/api/kernels", json={"name": 3}, timeout=30), 400, "name")
    jupyter_error(http.post(base + "/api/kernels", json={"env": []}, timeout=30), 400, "env")
    jupyter_error(http.post(base + "/api/sessions", json={"kernel": {"name": "python3"}}, timeout=30), 400, "path")
    jupyter_error(http.post(base + "/api/sessions", json={"path": "a.ipynb", "kernel": "python3"}, timeout=30),
                  400, "kernel")
    assert sessions_in(kube, ns) == []

    # The namespace prefix: the agent's own namespace, and one where it has no rights.
    r = http.get(f"{base}/namespaces/{ns}/api/kernels", timeout=30)
    assert r.status_code == 200 and r.json() == [], r.text
    jupyter_error(http.get(f"{base}/namespaces/{ns_b}/api/kernels", timeout=30), 403, str(ns_b))
    jupyter_error(http.get(f"{base}/namespaces/Not_A_Namespace/api/kernels", timeout=30), 400)


def test_jupyter_sessions_bind_notebooks_to_kernels(ns, gateway, kube):
    """POST /api/sessions starts a kernel for a path (or returns the path's
    session), attaches another path to a kernel by id, PATCH renames, and
    DELETE of a session deletes its kernel's NotebookSession; all under the
    `/namespaces/{ns}` prefix, with `Authorization: token`."""
    agent = Agent(ns, "vscode")
    http = requests.Session()
    http.headers["Authorization"] = f"token {agent.token}"
    base = f"{gateway.url}/namespaces/{ns}/api"

    r = http.post(base + "/sessions", json={"path": "work/a.ipynb", "name": "a.ipynb", "type": "notebook",
                                            "kernel": {"name": "python3"}}, timeout=READY_TIMEOUT + 30)
    assert r.status_code == 201, (r.status_code, r.text)
    sa = r.json()
    assert UUID.match(sa["id"]) and sa["path"] == "work/a.ipynb" and sa["type"] == "notebook", sa
    kernel = check_model(sa["kernel"])
    s = session_of_kernel(kube, ns, kernel["id"])
    name = s["metadata"]["name"]
    wait_ready(kube, ns, name, timeout=5)
    assert sa["id"] in s["metadata"]["annotations"]["notebook.dev/jupyter-session"], s["metadata"]

    # The same path again: the same session, no second kernel.
    r = http.post(base + "/sessions", json={"path": "work/a.ipynb", "type": "notebook",
                                            "kernel": {"name": "python3"}}, timeout=60)
    assert r.status_code == 201 and r.json()["id"] == sa["id"], r.text
    assert sessions_in(kube, ns) == [name]

    r = http.get(f"{base}/sessions/{sa['id']}", timeout=60)
    assert r.status_code == 200 and r.json()["kernel"]["id"] == kernel["id"], r.text
    # A restart through the gateway answers the kernel model after it.
    restarts = (get_session(kube, ns, name)["status"].get("kernelRestarts") or 0)
    r = http.post(f"{base}/kernels/{kernel['id']}/restart", json={}, timeout=120)
    assert r.status_code == 200, (r.status_code, r.text)
    assert check_model(r.json())["id"] == kernel["id"], r.json()
    kube.wait_for("NotebookSession", ns, name, lambda o: (o["status"].get("kernelRestarts") or 0) > restarts,
                  60, "the restart counted")
    r = http.patch(f"{base}/sessions/{sa['id']}", json={"path": "work/b.ipynb", "name": "b.ipynb"}, timeout=60)
    assert r.status_code == 200, r.text
    assert (r.json()["path"], r.json()["name"], r.json()["kernel"]["id"]) == ("work/b.ipynb", "b.ipynb", kernel["id"])
    r = http.get(base + "/sessions", timeout=60)
    assert r.status_code == 200 and [(x["id"], x["path"]) for x in r.json()] == [(sa["id"], "work/b.ipynb")], r.text
    jupyter_error(http.patch(f"{base}/sessions/{sa['id']}", json={"kernel": {"id": str(uuid.uuid4())}}, timeout=60),
                  404, "kernel does not exist")

    # Attaching by kernel id: the kernel now carries the new session.
    r = http.post(base + "/sessions", json={"path": "work/c.ipynb", "type": "notebook",
                                            "kernel": {"id": kernel["id"]}}, timeout=60)
    assert r.status_code == 201, r.text
    sc = r.json()
    assert sc["kernel"]["id"] == kernel["id"] and sc["id"] != sa["id"], sc
    assert sessions_in(kube, ns) == [name]

    r = http.delete(f"{base}/sessions/{sc['id']}", timeout=60)
    assert r.status_code == 204, (r.status_code, r.text)
    wait_gone(kube, "NotebookSession", ns, name, timeout=120)
    r = http.get(base + "/sessions", timeout=60)
    assert r.status_code == 200 and r.json() == [], r.text
