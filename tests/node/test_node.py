"""Tier 5: the chart, the example session and the sidecar's crash guarantees
on a real node (kubelet, containerd, runc, CNI, kube-proxy) with the images
built from this repo's Dockerfile and a local kernel image."""
from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from conftest import (FULLNAME, GATEWAY, OPERATOR_NS, READY_TIMEOUT, Api, log, mcp_calls, service_url,
                      session_token, tool_json)
from harness import check_exactly_once
from kube import path
from measure import cond

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def wait_ready(kube, ns: str, name: str, timeout: float = READY_TIMEOUT) -> dict:
    """The session Ready, and then its Service routing to its pod.

    Finding of this tier: a session is Ready (the operator asked the sidecar)
    up to one readiness period (5 s) before its pod is Ready, and only a Ready
    pod is an endpoint of the Service, so a client that uses the session's
    endpoint the moment it is Ready can be refused. Waited for here so the
    tests can use the Service; see the README."""
    s = kube.wait_for("NotebookSession", ns, name,
                      lambda s: s is not None and s.get("status", {}).get("phase") == "Ready"
                      and cond(s, "Ready").get("status") == "True", timeout, f"session {ns}/{name} Ready")
    pod_ip = kube.get(path("Pod", ns, s["status"]["podName"]))["status"]["podIP"]
    deadline = time.monotonic() + 30
    while True:
        slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                          labelSelector=f"kubernetes.io/service-name={name}")["items"]
        if any(pod_ip in e.get("addresses", []) and e.get("conditions", {}).get("ready")
               for sl in slices for e in sl.get("endpoints") or []):
            break
        assert time.monotonic() < deadline, f"Service {ns}/{name} never had {pod_ip} as a ready endpoint: {slices}"
        time.sleep(0.1)
    # kube-proxy applies the new endpoint to its rules a moment later.
    url = f"{service_url(kube, ns, name)}/healthz"
    while True:
        try:
            if requests_get(url).status_code == 200:
                return s
        except Exception:  # noqa: BLE001 - refused until kube-proxy synced
            pass
        assert time.monotonic() < deadline, f"{url} never answered through kube-proxy"
        time.sleep(0.1)


def apply_example(ns) -> str:
    """manifests/examples/session.yaml as a user applies it, with the local
    kernel image and the test's namespace."""
    text = (ROOT / "manifests" / "examples" / "session.yaml").read_text()
    assert "quay.io/jupyter/scipy-notebook:latest" in text and "namespace: notebooks" in text
    text = text.replace("quay.io/jupyter/scipy-notebook:latest", ns.node.kernel_image)
    text = text.replace("name: notebooks\n", f"name: {ns}\n").replace("namespace: notebooks\n", f"namespace: {ns}\n")
    return ns.node.kubectl("apply", "-f", "-", input=text)


def container_cgroup_pids(container_id: str) -> list[int]:
    """The host pids of a container (cgroupfs driver: .../kubepods/.../<id>)."""
    cid = container_id.split("://", 1)[1]
    base = pathlib.Path("/sys/fs/cgroup/pids/kubepods")
    dirs = [d for d in base.rglob(f"*{cid}*") if d.is_dir()]
    assert dirs, f"no cgroup for container {cid} under {base}"
    return [int(p) for p in (dirs[0] / "cgroup.procs").read_text().split()]


def exec_in(ns, pod: str, container: str, *cmd: str) -> str:
    return ns.node.kubectl("-n", ns, "exec", pod, "-c", container, "--", *cmd)


# -- (a) the chart ---------------------------------------------------------------------------------
def test_chart_operator_and_gateway_ready_under_restricted(node, kube, chart):
    nsobj = kube.get(path("Namespace", None, OPERATOR_NS))
    assert nsobj["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    for deploy in (FULLNAME, GATEWAY):
        d = kube.get(path("Deployment", OPERATOR_NS, deploy))
        assert d["status"].get("readyReplicas") == d["spec"]["replicas"], d["status"]
        sel = ",".join(f"{k}={v}" for k, v in d["spec"]["selector"]["matchLabels"].items())
        # Pods of an earlier rollout (a reused node) are on their way out.
        pods = [p for p in kube.list(path("Pod", OPERATOR_NS), labelSelector=sel)
                if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") not in ("Succeeded", "Failed")]
        assert pods, f"no pods of {deploy}"
        for p in pods:
            c = p["spec"]["containers"][0]
            assert c["image"] == node.operator_image and c["imagePullPolicy"] == "Never", c
            assert c["readinessProbe"]["httpGet"] and c["livenessProbe"]["httpGet"], c
            assert p["status"]["phase"] == "Running", p["status"]
            assert cond(p, "Ready")["status"] == "True", p["status"]
            st = p["status"]["containerStatuses"][0]
            assert st["ready"] and st["containerID"].startswith("containerd://"), st
            assert st["restartCount"] == 0, st
            assert p["spec"]["nodeName"] == node.env["NBO_NODE"]
    # The operator answers its probe port from the pod network (the kubelet
    # probes the same way), and its metrics Service routes through kube-proxy.
    url = service_url(kube, OPERATOR_NS, f"{FULLNAME}-metrics")
    deadline = time.monotonic() + 30
    while True:  # kube-proxy programs the Service a moment after the pods are Ready
        try:
            r = requests_get(url + "/metrics")
            if r.status_code == 200 and "notebook_operator" in r.text:
                break
            seen = f"{r.status_code} {r.text[:200]}"
        except Exception as e:  # noqa: BLE001
            seen = repr(e)
        slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{OPERATOR_NS}/endpointslices")["items"]
        assert time.monotonic() < deadline, (f"{url}/metrics: {seen}; endpoint slices: "
                                             f"{[(s['metadata']['name'], s.get('endpoints')) for s in slices]}")
        time.sleep(0.5)


def requests_get(url: str):
    import requests
    return requests.get(url, timeout=10)


# -- (b) the example session -----------------------------------------------------------------------
def test_example_session_runs_on_the_node(ns, kube):
    node = ns.node
    t0 = time.monotonic()
    apply_example(ns)
    s = wait_ready(kube, ns, "analysis")
    log(f"example session Ready {time.monotonic() - t0:.1f}s after kubectl apply")
    pod = kube.get(path("Pod", ns, s["status"]["podName"]))
    # The sidecar is a native sidecar: an init container that restarts always.
    side = pod["spec"]["initContainers"][0]
    assert side["restartPolicy"] == "Always" and side["image"] == node.operator_image, side
    kernel = pod["spec"]["containers"][0]
    assert kernel["image"] == node.kernel_image, kernel
    init_st = pod["status"]["initContainerStatuses"][0]
    main_st = pod["status"]["containerStatuses"][0]
    for st in (init_st, main_st):
        assert st["containerID"].startswith("containerd://"), st
        assert st["started"] is True and st["ready"] is True and "running" in st["state"], st
    assert kube.get(path("PersistentVolumeClaim", ns, "analysis-state"))["status"]["phase"] == "Bound"

    # 1+1 through the session's Service (ClusterIP, kube-proxy's rules).
    token = session_token(kube, ns, "analysis")
    svc = service_url(kube, ns, "analysis")
    e = Api(svc, token).run("1+1")
    assert e["state"] == "completed" and e["outputs"][0]["data"]["text/plain"] == "2", e

    # 1+1 through the gateway's Service with the official MCP SDK, as an agent
    # (a ServiceAccount with a Role on notebooksessions) does.
    kube.create(path("ServiceAccount", ns), {"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": "agent", "namespace": str(ns)}})
    kube.create(path("Role", ns), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "agent", "namespace": str(ns)},
        "rules": [{"apiGroups": ["notebook.dev"], "resources": ["notebooksessions"],
                   "verbs": ["get", "list", "watch", "create", "delete", "patch"]}]})
    kube.create(path("RoleBinding", ns), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "agent", "namespace": str(ns)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": str(ns)}]})
    agent_token = node.kubectl("-n", ns, "create", "token", "agent", "--duration=1h").strip()
    gw = service_url(kube, OPERATOR_NS, GATEWAY)
    nb = "node/forty-two.ipynb"
    deadline = time.monotonic() + 30
    while True:  # the RBAC authorizer learns of the new binding through its informers
        got = mcp_calls(gw + "/mcp", agent_token, [("execute", {"session": "analysis", "namespace": str(ns),
                                                                  "code": "1+1"})])
        if not got[0].is_error or time.monotonic() > deadline:
            break
        time.sleep(1)
    texts = [c.text for c in got[0].content if c.type == "text"]
    assert not got[0].is_error, texts
    assert json.loads(texts[0])["state"] == "completed" and "2" in texts[1:], texts
    args = {"session": "analysis", "namespace": str(ns), "path": nb}
    created, inserted = mcp_calls(gw + "/mcp", agent_token, [
        ("create_notebook", args), ("insert_cell", {**args, "source": "x = 21*2\nprint(x)"})])
    tool_json(created)
    cell_id = tool_json(inserted)["cell_id"]
    ran, = mcp_calls(gw + "/mcp", agent_token, [("run_cell", {**args, "cell_id": cell_id})])
    assert not ran.is_error and "42\n" in [c.text for c in ran.content if c.type == "text"][1:], ran

    # The notebook is a file on the pod's volume, read back by the kernel
    # container itself (kubectl exec: apiserver -> kubelet -> containerd).
    text = exec_in(ns, pod["metadata"]["name"], "kernel", "cat", f"/home/jovyan/work/{nb}")
    cells = {c["id"]: c for c in json.loads(text)["cells"]}
    assert cells[cell_id]["source"] in ("x = 21*2\nprint(x)", ["x = 21*2\n", "print(x)"]), cells
    assert cells[cell_id]["outputs"][0]["text"] in ("42\n", ["42\n"]), cells[cell_id]
    ids = exec_in(ns, pod["metadata"]["name"], "kernel", "id").strip()
    assert ids.startswith("uid=1000(jovyan) gid=100(users)"), ids


# -- (c) kill -9 of the sidecar in its container -----------------------------------------------------
def test_kill9_sidecar_container_loses_nothing_and_runs_nothing_twice(ns, kube, tmp_path):
    node = ns.node
    kube.create(path("NotebookSession", ns), {"apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
                                               "metadata": {"name": "crash", "namespace": str(ns)},
                                               "spec": {"kernel": {"image": node.kernel_image}}})
    s = wait_ready(kube, ns, "crash")
    podname = s["status"]["podName"]
    token = session_token(kube, ns, "crash")
    url = service_url(kube, ns, "crash")
    api = Api(url, token)
    assert api.run("survivor = 'still here'")["state"] == "completed"

    acked_path = tmp_path / "acked.jsonl"
    n, kills = 100, 2
    sub = subprocess.Popen([sys.executable, str(ROOT / "tests" / "sidecar" / "submitter.py"), url, token, str(n),
                            "/home/jovyan/work", str(acked_path)])
    try:
        for k in range(kills):
            # Wait until some work was acknowledged since the last kill.
            deadline = time.monotonic() + 120
            want = (k + 1) * n // (kills + 2)
            while (len(acked_path.read_text().splitlines()) if acked_path.exists() else 0) < want:
                assert sub.poll() is None, f"the submitter exited {sub.returncode}"
                assert time.monotonic() < deadline, "the submitter made no progress"
                time.sleep(0.05)
            pod = kube.get(path("Pod", ns, podname))
            st = pod["status"]["initContainerStatuses"][0]
            before = st["restartCount"]
            pids = container_cgroup_pids(st["containerID"])
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            log(f"kill -9 of the sidecar (host pids {pids}) after {want} acknowledged")
            kube.wait_for("Pod", ns, podname, lambda p: p["status"]["initContainerStatuses"][0]["restartCount"] > before
                          and p["status"]["initContainerStatuses"][0].get("started"), 120,
                          "the kubelet restarted the sidecar container")
        assert sub.wait(timeout=300) == 0, "the submitter failed"
    finally:
        if sub.poll() is None:
            sub.kill()
    wait_ready(kube, ns, "crash")
    deadline = time.monotonic() + 180
    while True:
        execs = api.executions()
        pending = [e for e in execs if e["state"] in ("queued", "running")]
        if not pending:
            break
        assert time.monotonic() < deadline, f"{len(pending)} executions never finished"
        api.get(pending[-1]["id"], wait=10)

    acked = [json.loads(line) for line in acked_path.read_text().splitlines()]
    ran = collections.Counter(exec_in(ns, podname, "kernel", "cat", "/home/jovyan/work/keys.txt").split())
    _, failed = check_exactly_once(acked, execs, ran, n, kills)
    # The kernel container was not restarted: its state is still there.
    e = api.run("survivor")
    assert e["outputs"][0]["data"]["text/plain"] == "'still here'", e
    pod = kube.get(path("Pod", ns, podname))
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert pod["status"]["initContainerStatuses"][0]["restartCount"] >= kills
    log(f"kill -9 x{kills}: {len(acked)} acknowledged, {sum(ran.values())} ran, {len(failed)} interrupted")
