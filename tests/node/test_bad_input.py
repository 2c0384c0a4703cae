"""Tier 5: bad input on a real node. A kernel image that is not there, a
kernel command that exits, a kernel killed by the runtime for its memory
limit: the session says what the kubelet says, and nothing else breaks."""
from __future__ import annotations

import threading
import time

import pytest

from conftest import Api, log, service_url, session_token
from kube import path
from test_node import cond, wait_ready


def create(kube, ns, name: str, **kernel) -> dict:
    return kube.create(path("NotebookSession", ns), {
        "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
        "metadata": {"name": name, "namespace": str(ns)}, "spec": {"kernel": kernel}})


def test_a_missing_kernel_image_shows_the_kubelets_reason(ns, kube):
    image = ns.node.kernel_image.rsplit(":", 1)[0] + "-does-not-exist:1"
    create(kube, ns, "noimage", image=image)
    # The chart is installed with kernelImagePullPolicy=Never (no registry is
    # reachable from this node): the kubelet's own reason, never a pull attempt.
    reasons = ("ErrImageNeverPull",)
    s = kube.wait_for("NotebookSession", ns, "noimage",
                      lambda s: s is not None and cond(s, "Ready").get("reason") in reasons, 120,
                      "the kubelet's pull error in the session's Ready condition")
    assert cond(s, "Ready")["status"] == "False" and s["status"]["phase"] != "Ready", s["status"]
    assert "container kernel" in cond(s, "Ready")["message"], cond(s, "Ready")
    pod = kube.get(path("Pod", ns, "noimage-kernel"))
    waiting = pod["status"]["containerStatuses"][0]["state"].get("waiting", {})
    assert waiting.get("reason") in reasons, pod["status"]
    # The sidecar still runs (it is another image), and answers.
    side = pod["status"]["initContainerStatuses"][0]
    assert side["started"] is True and side["containerID"].startswith("containerd://"), side


def test_a_kernel_that_exits_shows_crashloopbackoff_and_its_last_log_line(ns, kube):
    create(kube, ns, "quits", image=ns.node.kernel_image,
           command=["sh", "-c", "echo starting up; echo 'no kernel here: kernel-gave-up-here' >&2; exit 3"])
    s = kube.wait_for("NotebookSession", ns, "quits",
                      lambda s: s is not None and "CrashLoopBackOff" in (cond(s, "Ready").get("reason", "")
                                                                         + cond(s, "Ready").get("message", ""))
                      and "kernel-gave-up-here" in cond(s, "Ready").get("message", ""), 150,
                      "CrashLoopBackOff and the kernel's last log line in the Ready condition")
    assert s["status"]["phase"] != "Ready", s["status"]
    log(f"crash loop: {cond(s, 'Ready')}")
    # The sidecar keeps serving: an execution is accepted and can be read back.
    pod = kube.get(path("Pod", ns, "quits-kernel"))
    api = Api(f"http://{pod['status']['podIP']}:8888", session_token(kube, ns, "quits"))
    e = api.submit("1+1", key="while-crashing")
    assert api.get(e["id"])["id"] == e["id"]


# The kubelet restarts an OOMKilled kernel container within about a second,
# on the same ports, faster than the sidecar's heartbeat timeout: the sidecar
# sees the kernel's connection close instead (found by this tier).
def test_an_oom_killed_kernel_fails_the_running_execution_and_comes_back(ns, kube):
    create(kube, ns, "hungry", image=ns.node.kernel_image,
           resources={"requests": {"memory": "320Mi"}, "limits": {"memory": "320Mi"}})
    wait_ready(kube, ns, "hungry")
    api = Api(service_url(kube, ns, "hungry"), session_token(kube, ns, "hungry"))
    assert api.run("kept = 1")["state"] == "completed"

    # Watch the session for Ready=False while the kernel is down.
    seen_not_ready = threading.Event()
    stop = threading.Event()

    def watch():
        deadline = time.monotonic() + 150
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                kube.wait_for("NotebookSession", ns, "hungry", lambda s: stop.is_set() or (
                    s is not None and cond(s, "Ready").get("status") == "False"), 5, "not ready")
                if not stop.is_set():
                    seen_not_ready.set()
                return
            except TimeoutError:
                continue
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    e = api.submit("x = b'\\x01' * (1024 ** 3)")
    pod = kube.wait_for("Pod", ns, "hungry-kernel", lambda p: (
        p["status"]["containerStatuses"][0].get("lastState", {}).get("terminated", {}).get("reason") == "OOMKilled"),
        120, "the kernel container OOMKilled")
    assert pod["status"]["containerStatuses"][0]["restartCount"] >= 1
    # The sidecar is reached by pod IP: the Service has no ready endpoint while the kernel is down.
    direct = Api(f"http://{pod['status']['podIP']}:8888", session_token(kube, ns, "hungry"))
    done = direct.wait_final(e["id"], 45)
    assert done["state"] == "failed" and done.get("reason") == "kernel_died", done
    assert seen_not_ready.wait(60), "the session never said it was not Ready while its kernel was down"
    stop.set()
    wait_ready(kube, ns, "hungry")
    after = api.run("1+1")
    assert after["state"] == "completed" and after["outputs"][0]["data"]["text/plain"] == "2", after
