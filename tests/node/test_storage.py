"""Tier 5: sessions with storage on a real node: the claim binds to a local
PersistentVolume, the queue and the workspace outlive the pod (deleted with
an execution queued; suspended when idle and resumed)."""
from __future__ import annotations

import json
import time

from conftest import Api, log, service_url, session_token
from kube import path
from test_node import exec_in, wait_ready

NOTEBOOK = {"cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "source": "21*2", "outputs": [],
                       "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def create(kube, ns, name: str, **spec) -> dict:
    return kube.create(path("NotebookSession", ns), {
        "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
        "metadata": {"name": name, "namespace": str(ns)},
        "spec": {"kernel": {"image": ns.node.kernel_image}, "storage": {"size": "1Gi"}, **spec}})


def api_of(kube, ns, name: str) -> Api:
    return Api(service_url(kube, ns, name), session_token(kube, ns, name))


def write_notebook(api: Api, rel: str):
    code = (f"import json, os\nos.makedirs(os.path.dirname({'/home/jovyan/work/' + rel!r}), exist_ok=True)\n"
            f"json.dump({NOTEBOOK!r}, open({'/home/jovyan/work/' + rel!r}, 'w'))")
    assert api.run(code)["state"] == "completed"


def test_a_deleted_pod_comes_back_and_runs_what_was_queued(ns, kube):
    create(kube, ns, "keep")
    s = wait_ready(kube, ns, "keep")
    claim = kube.get(path("PersistentVolumeClaim", ns, "keep-state"))
    assert claim["status"]["phase"] == "Bound", claim["status"]
    old_pod = kube.get(path("Pod", ns, s["status"]["podName"]))
    api = api_of(kube, ns, "keep")
    write_notebook(api, "kept/nb.ipynb")
    first = api.run("'before the pod went'")
    blocker = api.submit("import time; time.sleep(600)")
    queued = api.submit("open('/home/jovyan/work/after.txt', 'w').write('ran on the new pod')", key="queued-1")
    deadline = time.monotonic() + 30
    while api.get(blocker["id"])["state"] != "running":
        assert time.monotonic() < deadline, "the blocker never started"
        time.sleep(0.1)
    assert api.get(queued["id"])["state"] == "queued"

    t0 = time.monotonic()
    ns.node.kubectl("-n", ns, "delete", "pod", old_pod["metadata"]["name"], "--wait=false")
    kube.wait_for("Pod", ns, old_pod["metadata"]["name"],
                  lambda p: p is not None and p["metadata"]["uid"] != old_pod["metadata"]["uid"]
                  and p["status"].get("phase") == "Running", 240, "a new kernel pod")
    wait_ready(kube, ns, "keep", timeout=240)
    log(f"pod deleted -> new pod Ready in {time.monotonic() - t0:.1f}s")
    api = api_of(kube, ns, "keep")
    done = api.wait_final(queued["id"], 120)
    assert done["state"] == "completed", done
    b = api.get(blocker["id"])
    assert b["state"] == "failed" and b["reason"] in ("interrupted", "kernel_died", "kernel_restarted"), b
    assert api.get(first["id"])["outputs"][0]["data"]["text/plain"] == "'before the pod went'"
    pod = s["status"]["podName"]
    assert exec_in(ns, pod, "kernel", "cat", "/home/jovyan/work/after.txt") == "ran on the new pod"
    assert json.loads(exec_in(ns, pod, "kernel", "cat", "/home/jovyan/work/kept/nb.ipynb"))["cells"][0]["id"] == "c1"


def test_idle_suspend_removes_the_pod_and_resume_serves_the_old_history(ns, kube):
    create(kube, ns, "doze", idleTimeout="20s")
    s = wait_ready(kube, ns, "doze")
    pod_uid = kube.get(path("Pod", ns, s["status"]["podName"]))["metadata"]["uid"]
    api = api_of(kube, ns, "doze")
    write_notebook(api, "doze.ipynb")
    e = api.run("'remembered'")
    s = kube.wait_for("NotebookSession", ns, "doze",
                      lambda s: s is not None and s.get("status", {}).get("phase") == "Suspended", 120,
                      "idle suspend")
    kube.wait_for("Pod", ns, "doze-kernel", lambda p: p is None or p["metadata"]["uid"] != pod_uid, 120,
                  "the kernel pod removed")
    assert kube.get_opt(path("Pod", ns, "doze-kernel")) is None
    t0 = time.monotonic()
    kube.patch(path("NotebookSession", ns, "doze"), {"spec": {"suspend": False}})
    wait_ready(kube, ns, "doze")
    log(f"resume -> Ready in {time.monotonic() - t0:.1f}s")
    api = api_of(kube, ns, "doze")
    old = api.get(e["id"])
    assert old["state"] == "completed" and old["outputs"][0]["data"]["text/plain"] == "'remembered'", old
    assert json.loads(exec_in(ns, "doze-kernel", "kernel", "cat", "/home/jovyan/work/doze.ipynb"))["nbformat"] == 4
