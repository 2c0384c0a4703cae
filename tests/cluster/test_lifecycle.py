"""Tier 4, issue 8: the session lifecycle on a real control plane with the
stand-in kubelet: idle suspend, suspend and resume with the queue intact,
shutdownTime, pod-shaping updates, and failures surfaced with their reason.

Times are compared on this machine's clock, which the sidecar, the operator
and the apiserver share."""
import time

import pytest

from harness import text_of
from kube import ApiError, path
from sessions import (SidecarApi, cond, create_session, get_session, parse_time, patch_session, phase, rfc3339,
                      wait_phase, wait_ready, wait_session)

# "within 1 s after the deadline"
SLACK = 1.0


def exists(kube, kind, ns, name) -> bool:
    return kube.get_opt(path(kind, ns, name)) is not None


def wait_gone(kube, kind, ns, name, timeout=60):
    kube.wait_for(kind, ns, name, lambda o: o is None, timeout, f"{kind} {ns}/{name} deleted")


def watch_until(kube, ns, name, predicate, seconds):
    """The session once predicate holds, or None if it did not within `seconds`."""
    try:
        return wait_session(kube, ns, name, predicate, timeout=seconds)
    except TimeoutError:
        return None


def last_activity(api: SidecarApi) -> float:
    return parse_time(api.status()["last_activity"])


def assert_on_time(what: str, at: float, deadline: float):
    late = at - deadline
    print(f"[timing] {what}: {late:+.3f}s after the deadline")
    assert 0 <= late <= SLACK, f"{what} {late:+.3f}s after its deadline (want 0..{SLACK}s)"


def test_idle_suspend_happens_within_1s_after_the_deadline(ns):
    kube = ns.kube
    create_session(kube, ns, "idle", idleTimeout="6s", storage={"size": "1Gi"})
    wait_ready(kube, ns, "idle")
    api = SidecarApi(kube, ns, "idle")
    assert api.wait_final(api.submit("1 + 1")["id"])["state"] == "completed"
    deadline = last_activity(api) + 6

    s = wait_session(kube, ns, "idle", lambda s: s["spec"].get("suspend") is True, timeout=30,
                     what="spec.suspend set by the operator")
    assert_on_time("the idle suspend", time.time(), deadline)

    s = wait_phase(kube, ns, "idle", "Suspended", timeout=30)
    ready = cond(s, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "IdleTimeout", s["status"]
    wait_gone(kube, "Pod", ns, "idle-kernel")
    # Kept while suspended: the token, the storage, the Service.
    for kind, name in (("Secret", "idle-token"), ("PersistentVolumeClaim", "idle-state"), ("Service", "idle")):
        assert exists(kube, kind, ns, name), kind
    # It stays suspended for the same reason on later reconciles.
    offset = ns.operator.log_size()
    kube.patch(path("NotebookSession", ns, "idle"), {"metadata": {"annotations": {"touch": "1"}}})
    ns.operator.wait_reconciled("idle", offset)
    s = get_session(kube, ns, "idle")
    assert phase(s) == "Suspended" and cond(s, "Ready")["reason"] == "IdleTimeout", s["status"]
    assert not exists(kube, "Pod", ns, "idle-kernel")


def test_a_running_cell_is_never_idle(ns):
    kube = ns.kube
    create_session(kube, ns, "busy", idleTimeout="5s")
    wait_ready(kube, ns, "busy")
    api = SidecarApi(kube, ns, "busy")
    long = api.submit("import time; time.sleep(30); 'done'")["id"]
    api.wait_state(long, ("running",), timeout=30)

    # Six idle timeouts pass while the cell runs: no suspend.
    suspended = watch_until(kube, ns, "busy", lambda s: s["spec"].get("suspend") or phase(s) == "Suspended", 27)
    assert suspended is None, f"suspended while a cell ran: {suspended['status']}"
    e = api.wait_final(long, timeout=30)
    assert e["state"] == "completed" and text_of(e) == "'done'", e

    # Idle from the moment it finished.
    deadline = last_activity(api) + 5
    wait_session(kube, ns, "busy", lambda s: s["spec"].get("suspend") is True, timeout=30,
                 what="spec.suspend after the cell finished")
    assert_on_time("the idle suspend after a long cell", time.time(), deadline)


def test_suspend_then_resume_keeps_queued_executions_which_then_run(ns):
    kube = ns.kube
    create_session(kube, ns, "nap", storage={"size": "1Gi"})
    wait_ready(kube, ns, "nap")
    api = SidecarApi(kube, ns, "nap")
    done = api.wait_final(api.submit("history = 'kept'; history")["id"])
    long = api.submit("import time; time.sleep(60)")["id"]
    queued = [api.submit(f"v{i} = {i} * 10; v{i}")["id"] for i in range(3)]
    api.wait_state(long, ("running",), timeout=30)

    patch_session(kube, ns, "nap", {"spec": {"suspend": True}})
    s = wait_phase(kube, ns, "nap", "Suspended", timeout=30)
    assert cond(s, "Ready")["reason"] == "Suspended", s["status"]
    wait_gone(kube, "Pod", ns, "nap-kernel")
    for kind, name in (("Secret", "nap-token"), ("PersistentVolumeClaim", "nap-state"), ("Service", "nap")):
        assert exists(kube, kind, ns, name), kind

    patch_session(kube, ns, "nap", {"spec": {"suspend": False}})
    wait_ready(kube, ns, "nap")
    again = SidecarApi(kube, ns, "nap")
    assert again.pod_uid != api.pod_uid
    for i, eid in enumerate(queued):
        e = again.wait_final(eid, timeout=60)
        assert e["state"] == "completed" and text_of(e) == str(i * 10), e
    assert text_of(again.get(done["id"])) == "'kept'"
    # At most once: the cell the suspend cut short is not run again.
    cut = again.get(long)
    assert cut["state"] == "failed", cut
    s = wait_session(kube, ns, "nap", lambda s: s["status"].get("queue", {}).get("completed") == 4
                     and s["status"]["queue"]["queued"] == 0, timeout=30, what="queue counts after the resume")
    assert s["status"]["queue"]["failed"] == 1


@pytest.mark.parametrize("policy", ["Delete", "Suspend"])
def test_shutdown_time_acts_on_time(ns, policy):
    kube = ns.kube
    name = policy.lower()
    at = int(time.time()) + 15  # metav1.Time has whole seconds; time to get Ready first
    create_session(kube, ns, name, storage={"size": "1Gi"}, shutdownTime=rfc3339(at), shutdownPolicy=policy)
    wait_ready(kube, ns, name, timeout=at - time.time() - 1)
    if policy == "Delete":
        wait_session(kube, ns, name, lambda s: s is None or s["metadata"].get("deletionTimestamp"),
                     timeout=30, what="the session deleted at shutdownTime")
        assert_on_time("the deletion at shutdownTime", time.time(), at)
        for kind, obj in (("Pod", f"{name}-kernel"), ("Service", name), ("Secret", f"{name}-token"),
                          ("PersistentVolumeClaim", f"{name}-state")):
            wait_gone(kube, kind, ns, obj)
    else:
        s = wait_phase(kube, ns, name, "Suspended", timeout=30)
        assert_on_time("the suspend at shutdownTime", time.time(), at)
        assert cond(s, "Ready")["reason"] == "ShutdownTime", s["status"]
        wait_gone(kube, "Pod", ns, f"{name}-kernel")
        assert exists(kube, "PersistentVolumeClaim", ns, f"{name}-state")
        assert exists(kube, "Secret", ns, f"{name}-token")


def test_an_image_change_replaces_the_pod_without_losing_a_queued_execution(ns):
    kube = ns.kube
    create_session(kube, ns, "upgrade", storage={"size": "1Gi"})
    wait_ready(kube, ns, "upgrade")
    api = SidecarApi(kube, ns, "upgrade")
    long = api.submit("import time; time.sleep(60)")["id"]
    api.wait_state(long, ("running",), timeout=30)
    queued = api.submit("q = 6 * 7; q")["id"]

    new_image = "quay.io/jupyter/scipy-notebook:2026-02-02"
    patch_session(kube, ns, "upgrade", {"spec": {"kernel": {"image": new_image}}})
    # The status says the pod is being replaced.
    s = wait_session(kube, ns, "upgrade", lambda s: cond(s, "Ready").get("reason") == "PodTerminating",
                     timeout=30, what="the update in progress")
    assert phase(s) == "Pending" and "replaced" in cond(s, "Ready")["message"], s["status"]
    s = wait_session(kube, ns, "upgrade", lambda s: phase(s) == "Ready" and
                     s["status"]["observedGeneration"] == s["metadata"]["generation"], timeout=180,
                     what="Ready on the new generation")
    pod = kube.get(path("Pod", ns, "upgrade-kernel"))
    assert pod["spec"]["containers"][0]["image"] == new_image
    again = SidecarApi(kube, ns, "upgrade")
    assert again.pod_uid != api.pod_uid
    e = again.wait_final(queued, timeout=60)
    assert e["state"] == "completed" and text_of(e) == "42", e
    assert again.get(long)["state"] == "failed", "the cell the update cut short is not run again"


def test_a_pod_stuck_in_image_pull_shows_the_reason_in_status(ns):
    kube = ns.kube
    bad = "registry.example/does-not-exist:1"
    create_session(kube, ns, "pull", kernel={"image": bad})
    # The stand-in kubelet reports the pull failure on the pod; the next
    # reconcile (the pod's watch event) copies it into the session.
    pod = kube.wait_for("Pod", ns, "pull-kernel", lambda p: p and any(
        c.get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff"
        for c in p.get("status", {}).get("containerStatuses", [])), timeout=60, what="ImagePullBackOff on the pod")
    seen = time.time()
    s = wait_session(kube, ns, "pull", lambda s: cond(s, "Ready").get("reason") == "ImagePullBackOff",
                     timeout=30, what="ImagePullBackOff in the session status")
    assert time.time() - seen < 2.0, "not within one reconcile"
    ready = cond(s, "Ready")
    assert phase(s) == "Failed" and ready["status"] == "False" and bad in ready["message"], s["status"]
    assert pod["metadata"]["uid"] == kube.get(path("Pod", ns, "pull-kernel"))["metadata"]["uid"], \
        "a pod waiting for its image is not replaced in a loop"

    # Fixing the image recovers the session: it does not stick in Failed.
    patch_session(kube, ns, "pull", {"spec": {"kernel": {"image": "quay.io/jupyter/base-notebook:latest"}}})
    wait_ready(kube, ns, "pull")


def test_an_unschedulable_pod_shows_the_reason_in_status(ns):
    kube = ns.kube
    create_session(kube, ns, "nowhere", podTemplate={"nodeSelector": {"nbo.test/no-such-node": "x"}})
    s = wait_session(kube, ns, "nowhere", lambda s: cond(s, "PodScheduled").get("reason") == "Unschedulable",
                     timeout=60, what="PodScheduled Unschedulable")
    assert phase(s) == "Pending" and cond(s, "PodScheduled")["status"] == "False", s["status"]
    assert "nodes are available" in cond(s, "Ready")["message"], s["status"]


def test_storage_cannot_be_added_or_removed(ns):
    kube = ns.kube
    create_session(kube, ns, "fixed")
    with pytest.raises(ApiError) as refused:
        patch_session(kube, ns, "fixed", {"spec": {"storage": {"size": "1Gi"}}})
    assert refused.value.status == 422 and "storage cannot be added or removed" in str(refused.value)
