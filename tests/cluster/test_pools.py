"""Tier 4, issue 17: warm pools. A NotebookPool keeps warm kernel pods (the
real sidecar in warm mode and a real ipykernel each, run by the stand-in
kubelet); a NotebookSession with poolRef is handed one of them, once, ever,
with its own fresh token, and the pool refills. An empty pool means a cold
start that says so; a missing pool is a condition, never a silent Pending.
A pool's warmup runs in each warm kernel before the pod is ready: the claimed
session sees its effect and none of its history; a failed warmup is the
pool's WarmupFailed condition with the error."""
import base64
import concurrent.futures
import json

import pytest
import requests

from kube import ApiError, path
from sessions import READY_TIMEOUT, SidecarApi, cond, create_session, get_session, phase, wait_ready, wait_session

KERNEL = {"image": "quay.io/jupyter/base-notebook:latest"}
POOL_LABEL = "notebook.dev/pool"
WARM_LABEL = "notebook.dev/warm"


def create_pool(kube, ns, name, replicas, **template):
    template.setdefault("kernel", KERNEL)
    return kube.create(path("NotebookPool", ns), {
        "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookPool",
        "metadata": {"name": name, "namespace": ns}, "spec": {"replicas": replicas, "template": template}})


def pool_status(p):
    return (p or {}).get("status", {})


def wait_pool(kube, ns, name, predicate, timeout, what):
    return kube.wait_for("NotebookPool", ns, name, lambda p: p is not None and predicate(pool_status(p)), timeout,
                         f"pool {ns}/{name}: {what}")


def warm_pods(kube, ns, pool):
    return [p for p in kube.list(path("Pod", ns), labelSelector=f"{POOL_LABEL}={pool},{WARM_LABEL}=true")
            if not p["metadata"].get("deletionTimestamp")]


def pool_token(kube, ns, pool):
    secret = kube.get(path("Secret", ns, f"{pool}-pool-token"))
    return base64.b64decode(secret["data"]["token"]).decode().strip()


def sidecar_url(pod):
    port = pod["spec"]["initContainers"][0]["ports"][0]["containerPort"]
    return f"http://{pod['status']['podIP']}:{port}"


def pooled_session(kube, ns, name, pool):
    return create_session(kube, ns, name, kernel={}, poolRef={"name": pool})


def assert_holds_a_warm_pod(kube, ns, name, warm_names):
    s = get_session(kube, ns, name)
    pod = kube.get(path("Pod", ns, s["status"]["podName"]))
    assert pod["metadata"]["name"] in warm_names, (pod["metadata"]["name"], warm_names)
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner.get("controller")) == \
        ("NotebookSession", name, s["metadata"]["uid"], True)
    labels = pod["metadata"]["labels"]
    assert WARM_LABEL not in labels and labels["notebook.dev/session"] == name, labels
    svc = kube.get(path("Service", ns, name))
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service selects the pod"
    claim = cond(s, "PoolClaim")
    assert (claim.get("status"), claim.get("reason")) == ("True", "Claimed"), claim
    return pod


def test_a_pool_hands_each_session_its_own_warm_pod_with_fresh_credentials_and_refills(ns):
    kube = ns.kube
    create_pool(kube, ns, "warm", 3)
    wait_pool(kube, ns, "warm", lambda st: st.get("ready") == 3, READY_TIMEOUT, "3 ready")
    pool_condition = cond(kube.get(path("NotebookPool", ns, "warm")), "Ready")
    assert pool_condition.get("status") == "True", pool_condition
    warm = warm_pods(kube, ns, "warm")
    warm_names = {p["metadata"]["name"] for p in warm}
    assert len(warm_names) == 3
    token = pool_token(kube, ns, "warm")

    # A warm sidecar serves nothing to clients before its claim, even with the pool token.
    url = sidecar_url(warm[0])
    r = requests.post(url + "/v1/executions", json={"code": "1"}, headers={"Authorization": f"Bearer {token}"},
                      timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "warm", r.text
    assert requests.get(url + "/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10).ok

    names = ["alpha", "beta", "gamma"]
    for name in names:
        pooled_session(kube, ns, name, "warm")
    for name in names:
        wait_ready(kube, ns, name, timeout=60)
    pods = [assert_holds_a_warm_pod(kube, ns, name, warm_names) for name in names]
    assert len({p["metadata"]["name"] for p in pods}) == 3, "three sessions, three different pods"

    # The pool made three new warm pods in their place.
    st = wait_pool(kube, ns, "warm", lambda st: st.get("ready") == 3 and st.get("claimed") == 3, READY_TIMEOUT,
                   "refilled to 3 ready, 3 claimed")
    refilled = {p["metadata"]["name"] for p in warm_pods(kube, ns, "warm")}
    assert len(refilled) == 3 and not refilled & warm_names, (refilled, warm_names)
    print(f"pool status after the claims: {pool_status(st)}")

    # One kernel per session: what one session sets the next does not see.
    alpha, beta = SidecarApi(kube, ns, "alpha"), SidecarApi(kube, ns, "beta")
    assert alpha.run("secret_value = 41")["state"] == "completed"
    seen = beta.run("'secret_value' in dir()")
    assert seen["state"] == "completed" and seen["outputs"][0]["data"]["text/plain"] == "False", seen

    # The pool's token no longer works on a claimed sidecar; the session's does.
    r = requests.get(alpha.url + "/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 401, r.text
    assert token != alpha.token
    assert alpha.status()["queue"]["completed"] >= 1
    # The claim is the operator's, once: a claim by anyone else now is refused.
    r = requests.post(alpha.url + "/v1/claim", headers={"Authorization": f"Bearer {token}"},
                      json={"session": "intruder", "namespace": str(ns), "token": "x" * 32}, timeout=10)
    assert r.status_code == 401, r.text


def test_a_claimed_warm_pod_serves_mcp_by_pod_ip_and_refuses_a_foreign_host(ns):
    kube = ns.kube
    create_pool(kube, ns, "ips", 1)
    wait_pool(kube, ns, "ips", lambda st: st.get("ready") == 1, READY_TIMEOUT, "one warm pod ready")
    warm_names = [p["metadata"]["name"] for p in warm_pods(kube, ns, "ips")]
    pooled_session(kube, ns, "warm-ip", "ips")
    wait_ready(kube, ns, "warm-ip")
    assert_holds_a_warm_pod(kube, ns, "warm-ip", warm_names)
    SidecarApi(kube, ns, "warm-ip").assert_mcp_by_pod_ip()


def test_an_empty_pool_starts_the_session_cold_and_says_so(ns):
    kube = ns.kube
    create_pool(kube, ns, "empty", 0)
    wait_pool(kube, ns, "empty", lambda st: "conditions" in st, 60, "a status")
    pooled_session(kube, ns, "chilly", "empty")
    s = wait_ready(kube, ns, "chilly")
    claim = cond(s, "PoolClaim")
    assert (claim.get("status"), claim.get("reason")) == ("False", "ColdStart"), claim
    assert "empty" in claim["message"] and "cold" in claim["message"], claim
    pod = kube.get(path("Pod", ns, s["status"]["podName"]))
    assert POOL_LABEL not in pod["metadata"]["labels"], pod["metadata"]["labels"]
    assert pod["spec"]["containers"][0]["image"] == KERNEL["image"], "built from the pool's template"
    assert SidecarApi(kube, ns, "chilly").run("1 + 1")["outputs"][0]["data"]["text/plain"] == "2"
    assert warm_pods(kube, ns, "empty") == []


def test_a_missing_pool_is_a_condition_and_its_creation_brings_the_session_up(ns):
    kube = ns.kube
    pooled_session(kube, ns, "orphan", "nowhere")
    s = wait_session(kube, ns, "orphan", lambda s: cond(s, "PoolClaim").get("reason") == "PoolNotFound", 30,
                     "PoolNotFound")
    assert phase(s) == "Pending"
    ready = cond(s, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PoolNotFound"), ready
    assert "nowhere" in ready["message"], ready
    assert kube.list(path("Pod", ns)) == [], "no pod while the pool is missing"

    # Asking for a kernel and a pool at once is refused by the apiserver.
    with pytest.raises(ApiError) as refused:
        create_session(kube, ns, "both", kernel=KERNEL, poolRef={"name": "nowhere"})
    assert refused.value.status == 422 and "poolRef" in refused.value.body, refused.value.body

    create_pool(kube, ns, "nowhere", 1)
    s = wait_ready(kube, ns, "orphan")
    assert cond(s, "PoolClaim").get("reason") in ("Claimed", "ColdStart"), cond(s, "PoolClaim")


def test_ten_sessions_at_once_get_ten_different_warm_pods(ns):
    kube = ns.kube
    create_pool(kube, ns, "burst", 10)
    wait_pool(kube, ns, "burst", lambda st: st.get("ready") == 10, 2 * READY_TIMEOUT, "10 ready")
    warm_names = {p["metadata"]["name"] for p in warm_pods(kube, ns, "burst")}
    assert len(warm_names) == 10
    names = [f"burst-{i}" for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: pooled_session(kube, ns, n, "burst"), names))
    for name in names:
        wait_ready(kube, ns, name, timeout=120)
    held = [assert_holds_a_warm_pod(kube, ns, name, warm_names)["metadata"]["name"] for name in names]
    assert sorted(held) == sorted(warm_names), "each warm pod went to exactly one session"
    # No pod carries two owners or went back to the pool.
    for pod in kube.list(path("Pod", ns), labelSelector=f"{POOL_LABEL}=burst"):
        owners = pod["metadata"].get("ownerReferences", [])
        assert len(owners) == 1, owners
        if pod["metadata"]["name"] in warm_names:
            assert owners[0]["kind"] == "NotebookSession" and WARM_LABEL not in pod["metadata"]["labels"]
    metrics = ns.operator.metrics()
    warm_claims = [line for line in metrics.splitlines() if line.startswith("notebook_operator_pool_claims_total")
                   and 'outcome="warm"' in line]
    assert warm_claims and float(warm_claims[0].split()[-1]) >= 10, warm_claims
    assert "notebook_operator_pool_claim_latency_seconds_bucket" in metrics
    conflicts = [line for line in metrics.splitlines() if line.startswith("notebook_operator_pool_claim_conflicts")]
    latency = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("notebook_operator_pool_claim_latency_seconds_") and "bucket" not in line}
    print(f"[pools] claim conflicts (409, then the next pod): {conflicts}; claim latency: {latency}")
    # Let the refill go: the next tests need the CPU more than these kernels do.
    kube.patch(path("NotebookPool", ns, "burst"), {"spec": {"replicas": 0}})


def test_a_pools_warmup_is_done_in_the_claimed_kernel_and_absent_from_the_sessions_history(ns):
    kube = ns.kube
    warmup = "import json\nprepared = json.dumps({'warmed': True})\nprint('warming up')\nprepared"
    # (assets: the apiserver takes the pool's asset defaults; what they do is a unit test's.)
    create_pool(kube, ns, "prep", 1, warmup=warmup, assets={"leaseDuration": "2h"})
    wait_pool(kube, ns, "prep", lambda st: st.get("ready") == 1, READY_TIMEOUT, "1 ready")
    (pod,) = warm_pods(kube, ns, "prep")
    token = pool_token(kube, ns, "prep")
    r = requests.get(sidecar_url(pod) + "/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.json()["warmup"] == {"state": "done"}, r.text

    pooled_session(kube, ns, "user", "prep")
    wait_ready(kube, ns, "user", timeout=60)
    assert_holds_a_warm_pod(kube, ns, "user", {pod["metadata"]["name"]})
    api = SidecarApi(kube, ns, "user")
    assert api.status()["queue"] == {"queued": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    r = api.http.get(api.url + "/v1/executions", timeout=10)
    assert r.status_code == 200 and r.json()["executions"] == [], r.text
    assert _no_execution_events(api), "no event of the warmup"

    e = api.run("prepared")
    assert e["outputs"][0]["data"]["text/plain"] == repr(json.dumps({"warmed": True})), e
    assert e["execution_count"] == 1, "the warmup is not an execution of the session"
    listed = api.http.get(api.url + "/v1/executions", timeout=10).json()["executions"]
    assert [x["id"] for x in listed] == [e["id"]], listed
    assert "warming up" not in str(listed)
    # The session's status counts its one execution, not the warmup.
    s = wait_session(kube, ns, "user", lambda s: (s["status"].get("queue") or {}).get("completed") == 1, 30,
                     "the execution counted")
    assert s["status"]["queue"] == {"queued": 0, "running": 0, "completed": 1, "failed": 0}, s["status"]["queue"]


def _no_execution_events(api):
    """The event log holds no event that belongs to an execution (the warm
    pod's kernel events are not the warmup's)."""
    newest = api.status()["events"]["newest_seq"]
    if newest == 0:
        return True
    seen = []
    with api.http.get(api.url + "/v1/events", params={"since": 0}, stream=True, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith(b"id:") and int(line[3:]) >= newest:
                break
            if line.startswith(b"data:"):
                seen.append(line)
    return all(b"execution_id" not in line for line in seen)


def test_a_failed_warmup_is_the_pools_warmupfailed_condition_and_a_fixed_one_replaces_the_pods(ns):
    kube = ns.kube
    create_pool(kube, ns, "broken", 1, warmup="import no_such_module_nbo")
    why = "warmup failed: ModuleNotFoundError: No module named 'no_such_module_nbo'"
    p = wait_pool(kube, ns, "broken", lambda st: cond({"status": st}, "Ready").get("reason") == "WarmupFailed",
                  READY_TIMEOUT, "WarmupFailed")
    ready = cond(p, "Ready")
    assert ready["status"] == "False" and ready["message"].startswith(why), ready
    assert (pool_status(p)["ready"], pool_status(p)["warm"]) == (0, 1), pool_status(p)
    (pod,) = warm_pods(kube, ns, "broken")
    sidecar = pod["status"]["initContainerStatuses"][0]
    assert sidecar["lastState"]["terminated"]["message"] == why, sidecar
    assert not sidecar["ready"], sidecar
    r = requests.get(sidecar_url(pod) + "/readyz", timeout=10)
    assert r.status_code == 503 and why in r.text, r.text
    # `kubectl get nbp` shows it in the Status column.
    table = ns.cluster.kubectl("-n", ns, "get", "nbp", "broken").splitlines()
    header, row = table[0].split(), table[1].split()
    assert row[header.index("STATUS")] == "WarmupFailed", table

    # And a Warning Event on the pool says it (kubectl describe nbp).
    events = kube.list(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
    warned = [e for e in events if e["regarding"].get("kind") == "NotebookPool" and e.get("reason") == "WarmupFailed"]
    assert warned and warned[0]["type"] == "Warning" and why in warned[0]["note"], warned

    # A fixed warmup changes the pod template's hash: the failed pod is replaced.
    kube.patch(path("NotebookPool", ns, "broken"), {"spec": {"template": {"warmup": "import json"}}})
    p = wait_pool(kube, ns, "broken", lambda st: st.get("ready") == 1 and
                  cond({"status": st}, "Ready").get("reason") == "Warm", READY_TIMEOUT, "fixed")
    (fixed,) = warm_pods(kube, ns, "broken")
    assert fixed["metadata"]["name"] != pod["metadata"]["name"]
