"""Tier 5, issue 17: warm pools on a real node. A NotebookPool's warm pods are
real pods (containerd, runc, the sidecar image built from the Dockerfile in
warm mode, a real ipykernel); a NotebookSession with poolRef is handed one of
them, once, with its own fresh token, and the pool refills. An empty pool
means a cold start that says so. The tier-4 version is
tests/cluster/test_pools.py; here the pods are reached by their IPs on the
node's bridge and the sessions through their Services (kube-proxy).

Budget: 2 cores, every warm pod a real ipykernel: one pool of 3 (6 kernels
at the peak, during the refill), scaled to 0 when the test is done."""
from __future__ import annotations

import base64
import time

import requests

from conftest import Api, log, service_url, session_token
from kube import path
from measure import cond
from test_node import wait_ready

POOL_LABEL = "notebook.dev/pool"
WARM_LABEL = "notebook.dev/warm"
POOL_READY_TIMEOUT = 240  # three real ipykernels start at once on 2 cores


def create_pool(ns, name: str, replicas: int) -> dict:
    return ns.kube.create(path("NotebookPool", ns), {
        "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookPool",
        "metadata": {"name": name, "namespace": str(ns)},
        "spec": {"replicas": replicas, "template": {"kernel": {"image": ns.node.kernel_image}}}})


def wait_pool(kube, ns, name: str, predicate, timeout: float, what: str) -> dict:
    return kube.wait_for("NotebookPool", ns, name,
                         lambda p: p is not None and predicate(p.get("status", {})), timeout,
                         f"pool {ns}/{name}: {what}")


def pooled_session(kube, ns, name: str, pool: str) -> dict:
    return kube.create(path("NotebookSession", ns), {
        "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
        "metadata": {"name": name, "namespace": str(ns)}, "spec": {"poolRef": {"name": pool}}})


def warm_pods(kube, ns, pool: str) -> list[dict]:
    return [p for p in kube.list(path("Pod", ns), labelSelector=f"{POOL_LABEL}={pool},{WARM_LABEL}=true")
            if not p["metadata"].get("deletionTimestamp")]


def pool_token(kube, ns, pool: str) -> str:
    secret = kube.get(path("Secret", ns, f"{pool}-pool-token"))
    return base64.b64decode(secret["data"]["token"]).decode().strip()


def pod_sidecar_url(pod: dict) -> str:
    """The sidecar of a pod at its IP on the node's bridge (this machine)."""
    port = pod["spec"]["initContainers"][0]["ports"][0]["containerPort"]
    return f"http://{pod['status']['podIP']}:{port}"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_pool_on_the_node_hands_each_session_its_own_warm_pod_and_refills(ns, kube):
    t0 = time.monotonic()
    create_pool(ns, "warm", 3)
    p = wait_pool(kube, ns, "warm", lambda st: st.get("ready") == 3, POOL_READY_TIMEOUT, "3 ready")
    log(f"pool of 3 ready {time.monotonic() - t0:.1f}s after create")
    assert cond(p, "Ready").get("status") == "True", p["status"]
    warm = warm_pods(kube, ns, "warm")
    warm_names = {w["metadata"]["name"] for w in warm}
    assert len(warm_names) == 3, warm_names
    for w in warm:
        side, kernel = w["status"]["initContainerStatuses"][0], w["status"]["containerStatuses"][0]
        assert side["containerID"].startswith("containerd://") and side["ready"], side
        assert kernel["containerID"].startswith("containerd://") and "running" in kernel["state"], kernel
        assert w["spec"]["containers"][0]["image"] == ns.node.kernel_image
    token = pool_token(kube, ns, "warm")

    # Before its claim a warm sidecar serves nothing, even with the pool's token.
    for w in warm:
        url = pod_sidecar_url(w)
        r = requests.post(url + "/v1/executions", json={"code": "1"}, headers=bearer(token), timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "warm", (url, r.status_code, r.text)
        assert requests.get(url + "/v1/status", headers=bearer(token), timeout=10).ok, url

    names = ["alpha", "beta", "gamma"]
    t1 = time.monotonic()
    for name in names:
        pooled_session(kube, ns, name, "warm")
    sessions = {name: wait_ready(kube, ns, name, timeout=120) for name in names}
    log(f"3 pooled sessions Ready (and routed by kube-proxy) {time.monotonic() - t1:.1f}s after create")
    pods = {}
    for name, s in sessions.items():
        pod = kube.get(path("Pod", ns, s["status"]["podName"]))
        assert pod["metadata"]["name"] in warm_names, (name, pod["metadata"]["name"], warm_names)
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("NotebookSession", name, s["metadata"]["uid"]), owner
        assert WARM_LABEL not in pod["metadata"]["labels"], pod["metadata"]["labels"]
        claim = cond(s, "PoolClaim")
        assert (claim.get("status"), claim.get("reason")) == ("True", "Claimed"), claim
        # The same containers the pool started: a claim restarts nothing.
        for st in pod["status"]["initContainerStatuses"] + pod["status"]["containerStatuses"]:
            assert st["restartCount"] == 0, st
        pods[name] = pod
    assert len({p["metadata"]["name"] for p in pods.values()}) == 3, "three sessions, three different pods"

    # The pool made three new warm pods in their place.
    t2 = time.monotonic()
    st = wait_pool(kube, ns, "warm", lambda st: st.get("ready") == 3 and st.get("claimed") == 3,
                   POOL_READY_TIMEOUT, "refilled to 3 ready, 3 claimed")["status"]
    refilled = {w["metadata"]["name"] for w in warm_pods(kube, ns, "warm")}
    assert len(refilled) == 3 and not refilled & warm_names, (refilled, warm_names)
    log(f"pool refilled to 3 ready {time.monotonic() - t2:.1f}s after the claims: {st}")

    # One kernel per session: what one session sets, the next does not see.
    apis = {name: Api(service_url(kube, ns, name), session_token(kube, ns, name)) for name in names}
    e = apis["alpha"].run("secret_value = 41")
    assert e["state"] == "completed", e
    for other in ("beta", "gamma"):
        seen = apis[other].run("'secret_value' in dir()")
        assert seen["state"] == "completed" and seen["outputs"][0]["data"]["text/plain"] == "False", (other, seen)
    e = apis["alpha"].run("secret_value + 1")
    assert e["outputs"][0]["data"]["text/plain"] == "42", e

    # The pool's token is refused once the pod is claimed, through the
    # session's Service and at the pod itself; the session's own token works.
    for name in names:
        session_tok = session_token(kube, ns, name)
        assert session_tok != token
        for url in (service_url(kube, ns, name), pod_sidecar_url(pods[name])):
            r = requests.get(url + "/v1/status", headers=bearer(token), timeout=10)
            assert r.status_code == 401, (name, url, r.status_code, r.text)
            r = requests.post(url + "/v1/executions", json={"code": "1"}, headers=bearer(token), timeout=10)
            assert r.status_code == 401, (name, url, r.status_code, r.text)
            assert requests.get(url + "/v1/status", headers=bearer(session_tok), timeout=10).ok, (name, url)
        # Nor can the pool's token claim it again.
        r = requests.post(pod_sidecar_url(pods[name]) + "/v1/claim", headers=bearer(token),
                          json={"session": "intruder", "namespace": str(ns), "token": "x" * 32}, timeout=10)
        assert r.status_code == 401, (name, r.status_code, r.text)

    # The refill's kernels are not needed any more: give the 2 cores back.
    kube.patch(path("NotebookPool", ns, "warm"), {"spec": {"replicas": 0}})
    wait_pool(kube, ns, "warm", lambda st: st.get("warm") == 0, 120, "scaled to 0")


def test_an_empty_pool_on_the_node_starts_the_session_cold_and_says_so(ns, kube):
    create_pool(ns, "empty", 0)
    wait_pool(kube, ns, "empty", lambda st: "conditions" in st, 60, "a status")
    t0 = time.monotonic()
    pooled_session(kube, ns, "chilly", "empty")
    s = wait_ready(kube, ns, "chilly")
    log(f"cold session of an empty pool Ready {time.monotonic() - t0:.1f}s after create")
    claim = cond(s, "PoolClaim")
    assert (claim.get("status"), claim.get("reason")) == ("False", "ColdStart"), claim
    assert "no ready warm pod" in claim["message"] and "cold" in claim["message"], claim
    pod = kube.get(path("Pod", ns, s["status"]["podName"]))
    assert POOL_LABEL not in pod["metadata"]["labels"], pod["metadata"]["labels"]
    assert pod["spec"]["containers"][0]["image"] == ns.node.kernel_image, "built from the pool's template"
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    api = Api(service_url(kube, ns, "chilly"), session_token(kube, ns, "chilly"))
    e = api.run("1 + 1")
    assert e["state"] == "completed" and e["outputs"][0]["data"]["text/plain"] == "2", e
    assert warm_pods(kube, ns, "empty") == []
