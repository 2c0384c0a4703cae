"""Tier 4, issue 6: a NotebookSession becomes a kernel pod on a real
kube-apiserver, run by the stand-in kubelet, reconciled by the operator binary
holding nothing but the chart's RBAC."""
import base64
import re
import subprocess
import time

import pytest
import requests

from conftest import OPERATOR_NS, refusals, without_flags
from harness import text_of
from kube import ApiError, path
from sessions import SidecarApi, cond, create_session, get_session, phase, wait_ready, wait_session, wait_until

RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
              "seccompProfile": {"type": "RuntimeDefault"}}


def owned_by(obj: dict, session: dict) -> bool:
    refs = obj["metadata"].get("ownerReferences", [])
    return any(r["kind"] == "NotebookSession" and r["name"] == session["metadata"]["name"]
               and r["uid"] == session["metadata"]["uid"] and r.get("controller") is True
               and r["apiVersion"] == "notebook.dev/v1alpha1"
               for r in refs)


def wait_exists(kube, kind, ns, name, timeout=30):
    return kube.wait_for(kind, ns, name, lambda o: o is not None, timeout, f"{kind} {ns}/{name}")


def wait_gone(kube, kind, ns, name, timeout=60):
    kube.wait_for(kind, ns, name, lambda o: o is None, timeout, f"{kind} {ns}/{name} deleted")


def test_session_owns_pod_service_secret_and_claim_with_the_expected_spec(restricted_ns):
    ns, kube = restricted_ns, restricted_ns.kube
    create_session(kube, ns, "spec", kernel={
        "image": "quay.io/jupyter/scipy-notebook:2026-01-01",
        "env": [{"name": "OMP_NUM_THREADS", "value": "2"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    }, storage={"size": "1Gi"}, idleTimeout="30m", podTemplate={
        "nodeSelector": {"kubernetes.io/os": "linux"}, "labels": {"team": "research"},
        "annotations": {"example.com/cost-center": "42"}})
    session = get_session(kube, ns, "spec")

    svc = wait_exists(kube, "Service", ns, "spec")
    secret = wait_exists(kube, "Secret", ns, "spec-token")
    pvc = wait_exists(kube, "PersistentVolumeClaim", ns, "spec-state")
    pod = wait_exists(kube, "Pod", ns, "spec-kernel")  # admitted under Pod Security "restricted"
    policy = wait_exists(kube, "NetworkPolicy", ns, "spec")
    for o in (svc, secret, pvc, pod, policy):
        assert owned_by(o, session), o["metadata"]
        assert o["metadata"]["labels"]["notebook.dev/session"] == "spec"
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "notebook-operator"

    # Service: the sidecar's port, selecting the session's pod.
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "notebook-session", "notebook.dev/session": "spec"}
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("http", 8888, "http")]
    # Secret: a client token and a kernel key, random, 256 bits each.
    assert secret["type"] == "Opaque" and sorted(secret["data"]) == ["kernel-key", "token"]
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert all(re.fullmatch("[0-9a-f]{64}", v) for v in values.values()) and len(set(values.values())) == 2
    # NetworkPolicy (the chart's flags): the session's pod, egress only to
    # DNS, the sidecar's port only for the chart's peers (operator, gateway,
    # agent namespaces).
    pspec = policy["spec"]
    assert pspec["podSelector"] == {"matchLabels": svc["spec"]["selector"]}
    assert pspec["policyTypes"] == ["Ingress", "Egress"]
    assert [p["port"] for r in pspec["egress"] for p in r["ports"]] == [53, 53]
    (ingress,) = pspec["ingress"]
    assert ingress["ports"] == [{"port": 8888, "protocol": "TCP"}] and len(ingress["from"]) == 3, ingress
    # Claim: the size asked for.
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]

    # Pod: the sidecar as a native sidecar running the operator's image, the kernel from the spec.
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["metadata"]["labels"]["team"] == "research"
    assert pod["metadata"]["annotations"]["example.com/cost-center"] == "42"
    assert pod["metadata"]["annotations"]["notebook.dev/spec-hash"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    [sidecar] = spec["initContainers"]
    assert sidecar["name"] == "sidecar" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "notebook-operator:0.1.0"  # the chart's image, given to the operator
    assert sidecar["args"][0] == "sidecar"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [kernel] = spec["containers"]
    assert kernel["name"] == "kernel" and kernel["image"] == "quay.io/jupyter/scipy-notebook:2026-01-01"
    assert kernel["command"] == ["python", "-m", "ipykernel_launcher", "-f", "/run/notebook/kernel.json"]
    assert kernel["env"] == [{"name": "OMP_NUM_THREADS", "value": "2"}]
    # The session names no ephemeral storage: the chart's defaults are added.
    assert kernel["resources"]["limits"] == {"memory": "1Gi", "ephemeral-storage": "10Gi"}
    assert kernel["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "256Mi"}
    for c in (sidecar, kernel):
        assert {k: c["securityContext"].get(k) for k in RESTRICTED} == RESTRICTED, c["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "spec-state"
    assert volumes["token"]["secret"]["secretName"] == "spec-token"
    assert "emptyDir" in volumes["runtime"]
    assert not any(m["name"] == "token" for m in kernel["volumeMounts"]), "the kernel must not see the token"

    # Status: what a user reads, for the generation it describes.
    s = wait_ready(kube, ns, "spec")
    st = s["status"]
    assert st["observedGeneration"] == s["metadata"]["generation"]
    assert st["endpoint"] == f"http://spec.{ns}.svc:8888"
    assert st["mcpEndpoint"] == f"http://spec.{ns}.svc:8888/mcp"
    assert st["tokenSecretName"] == "spec-token" and st["podName"] == "spec-kernel"
    for t in ("SpecValid", "Ready", "PodScheduled", "KernelAlive"):
        c = cond(s, t)
        assert c.get("status") == "True", (t, st["conditions"])
        assert c["observedGeneration"] == s["metadata"]["generation"] and c["lastTransitionTime"]
    table = ns.cluster.kubectl("-n", ns, "get", "nbs", "spec")
    assert re.search(r"NAME\s+PHASE\s+READY\s+ENDPOINT", table) and re.search(r"spec\s+Ready\s+True\s+http://", table), table

    # Events on transitions.
    events = kube.list(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
    reasons = {e.get("reason") for e in events if e["regarding"].get("name") == "spec"
               and e["regarding"].get("kind") == "NotebookSession"}
    assert "Ready" in reasons, reasons

    # The Secret is created once and never rewritten: a reconcile (caused by
    # any change) leaves it as it was.
    before = kube.get(path("Secret", ns, "spec-token"))
    for touched in (path("NotebookSession", ns, "spec"), path("Pod", ns, "spec-kernel")):
        offset = ns.operator.log_size()
        kube.patch(touched, {"metadata": {"annotations": {"touch": "1"}}})
        ns.operator.wait_reconciled("spec", offset)
    after = kube.get(path("Secret", ns, "spec-token"))
    assert after["data"] == before["data"] and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert kube.get(path("Pod", ns, "spec-kernel"))["metadata"]["uid"] == pod["metadata"]["uid"], \
        "an unchanged spec must not replace the pod"


def test_session_becomes_ready_with_queue_counts_from_the_sidecar(ns):
    kube = ns.kube
    create_session(kube, ns, "counts")
    s = wait_ready(kube, ns, "counts")
    assert cond(s, "KernelAlive")["status"] == "True", s["status"]
    assert s["status"]["queue"] == {"queued": 0, "running": 0, "completed": 0, "failed": 0}
    api = SidecarApi(kube, ns, "counts")
    assert api.ip.startswith("127.") and api.ip != "127.0.0.1"

    e = api.wait_final(api.submit("6 * 7")["id"])
    assert e["state"] == "completed" and text_of(e) == "42", e
    wait_session(kube, ns, "counts", lambda s: s["status"].get("queue", {}).get("completed") == 1,
                 timeout=30, what="queue.completed 1 in status")

    long = api.submit("import time; time.sleep(20)")["id"]
    waiting = api.submit("1 + 1")["id"]
    api.wait_state(long, ("running",), timeout=30)
    s = wait_session(kube, ns, "counts", lambda s: s["status"].get("queue", {}).get("running") == 1
                     and s["status"]["queue"].get("queued") == 1, timeout=30, what="queue running 1, queued 1")
    assert cond(s, "KernelAlive")["reason"] == "KernelBusy", s["status"]
    api.http.post(f"{api.url}/v1/executions/{long}/cancel", timeout=10)
    assert api.wait_final(waiting)["state"] == "completed"
    s = wait_session(kube, ns, "counts", lambda s: s["status"]["queue"]["completed"] == 2
                     and s["status"]["queue"]["running"] == 0 and s["status"]["queue"]["queued"] == 0,
                     timeout=30, what="queue drained in status")
    assert s["status"].get("lastActivityTime"), s["status"]


def test_an_agent_in_the_cluster_reaches_mcp_by_pod_ip_and_a_foreign_host_is_refused(ns):
    kube = ns.kube
    create_session(kube, ns, "by-ip")
    wait_ready(kube, ns, "by-ip")
    api = SidecarApi(kube, ns, "by-ip")
    pod = kube.get(path("Pod", ns, "by-ip-kernel"))
    env = {e["name"]: e for e in pod["spec"]["initContainers"][0].get("env", [])}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", env
    api.assert_mcp_by_pod_ip()


def test_a_deleted_pod_is_recreated(ns):
    kube = ns.kube
    create_session(kube, ns, "phoenix", storage={"size": "1Gi"})
    wait_ready(kube, ns, "phoenix")
    api = SidecarApi(kube, ns, "phoenix")
    first = api.wait_final(api.submit("'before'")["id"])
    assert first["state"] == "completed"

    kube.delete(path("Pod", ns, "phoenix-kernel"))  # graceful, as kubectl delete does
    s = wait_session(kube, ns, "phoenix", lambda s: phase(s) != "Ready", timeout=30, what="not Ready")
    s = wait_ready(kube, ns, "phoenix")
    again = SidecarApi(kube, ns, "phoenix")
    assert again.pod_uid != api.pod_uid, "a new pod"
    # The claim kept the queue's history across the pod's loss.
    assert again.get(first["id"])["state"] == "completed"
    assert text_of(again.wait_final(again.submit("'after'")["id"])) == "'after'"
    wait_session(kube, ns, "phoenix", lambda s: s["status"]["queue"]["completed"] == 2, timeout=30,
                 what="history and new work counted")


def test_a_deleted_secret_is_recreated_and_the_session_serves_its_new_token_and_refuses_the_old(ns, capsys):
    """The session Secret deleted under a Ready session: the operator makes a
    new one (fresh values) and replaces the pod, whose sidecar held the old
    token, so the Secret and the sidecar never disagree: within 30 s the
    session is Ready on a new pod that takes the new token, and the old
    token is refused there. The queue's history is kept (on the claim)."""
    kube = ns.kube
    create_session(kube, ns, "rekey", storage={"size": "1Gi"})
    wait_ready(kube, ns, "rekey")
    old = SidecarApi(kube, ns, "rekey")
    before = old.wait_final(old.submit("'before'")["id"])
    pod = kube.get(path("Pod", ns, "rekey-kernel"))
    marked = pod["metadata"]["annotations"]["notebook.dev/secret-hash"]
    old_secret = kube.get(path("Secret", ns, "rekey-token"))

    t0 = time.monotonic()
    kube.delete(path("Secret", ns, "rekey-token"))
    deadline = t0 + 30

    def serving_new_token():
        secret = kube.get_opt(path("Secret", ns, "rekey-token"))
        s = get_session(kube, ns, "rekey")
        if secret is None or secret["metadata"]["uid"] == old_secret["metadata"]["uid"] or phase(s) != "Ready":
            return None
        api = SidecarApi(kube, ns, "rekey")
        if api.pod_uid == old.pod_uid:
            return None
        try:
            return api if api.http.get(f"{api.url}/v1/status", timeout=2).status_code == 200 else None
        except requests.RequestException:
            return None

    found = {}

    def served():
        found["api"] = serving_new_token()
        return found["api"] is not None
    wait_until(served, timeout=deadline - time.monotonic(), step=0.1,
               what="a new Secret and a Ready session serving its token within 30 s")
    recovered = time.monotonic() - t0
    new = found["api"]
    assert new.token != old.token
    assert kube.get(path("Pod", ns, "rekey-kernel"))["metadata"]["annotations"]["notebook.dev/secret-hash"] != marked
    refused = requests.get(f"{new.url}/v1/status", headers={"Authorization": f"Bearer {old.token}"}, timeout=5)
    assert refused.status_code == 401, refused.text
    assert new.get(before["id"])["state"] == "completed", "the history is kept"
    assert text_of(new.wait_final(new.submit("'after'")["id"])) == "'after'"
    events = kube.list(path("Event", ns), fieldSelector="involvedObject.name=rekey")
    assert any(e["reason"] == "SecretChanged" for e in events), [e["reason"] for e in events]
    with capsys.disabled():
        print(f"\n[faults] Secret deleted -> Ready with the new token: {recovered:.2f} s")


def test_deleting_the_session_garbage_collects_what_it_owns(ns):
    kube = ns.kube
    create_session(kube, ns, "gone", storage={"size": "1Gi"})
    wait_ready(kube, ns, "gone")
    kube.delete(path("NotebookSession", ns, "gone"))
    wait_gone(kube, "NotebookSession", ns, "gone")
    # kube-controller-manager's garbage collector follows the owner references.
    for kind, name in (("Pod", "gone-kernel"), ("Service", "gone"), ("Secret", "gone-token"),
                       ("PersistentVolumeClaim", "gone-state")):
        wait_gone(kube, kind, ns, name)


def can_i(operator, verb, resource, ns=None, group="", sub="", name=""):
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "group": group,
                                              "subresource": sub, "namespace": ns or "", "name": name}}}
    return operator.kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)["status"]["allowed"]


def test_the_operator_holds_the_chart_rbac_and_no_more(operator, ns):
    """Every other test proves the chart's RBAC is enough (the namespace
    fixture fails on any 'forbidden' in the operator's log); this one checks
    the operator's token cannot do what it has no business doing."""
    assert can_i(operator, "patch", "notebooksessions", ns, "notebook.dev", "status")
    assert can_i(operator, "create", "pods", ns) and can_i(operator, "create", "secrets", ns)
    assert can_i(operator, "update", "notebooksessions", ns, "notebook.dev", "finalizers")
    # Pools: read, status written, warm pods owned (blockOwnerDeletion) by them.
    assert can_i(operator, "watch", "notebookpools", ns, "notebook.dev")
    assert can_i(operator, "patch", "notebookpools", ns, "notebook.dev", "status")
    assert can_i(operator, "update", "notebookpools", ns, "notebook.dev", "finalizers")
    assert can_i(operator, "update", "leases", OPERATOR_NS, "coordination.k8s.io", name="notebook-operator-leader")
    denied = [
        ("update", "secrets", ns, "", ""), ("patch", "secrets", ns, "", ""), ("delete", "secrets", ns, "", ""),
        ("create", "pods", ns, "", "exec"), ("create", "pods", ns, "", "portforward"),
        ("create", "notebooksessions", ns, "notebook.dev", ""),
        ("update", "notebooksessions", ns, "notebook.dev", ""),
        ("create", "notebookpools", ns, "notebook.dev", ""), ("patch", "notebookpools", ns, "notebook.dev", ""),
        ("delete", "notebookpools", ns, "notebook.dev", ""), ("update", "notebookpools", ns, "notebook.dev", ""),
        ("delete", "services", ns, "", ""), ("delete", "persistentvolumeclaims", ns, "", ""),
        ("list", "nodes", None, "", ""), ("delete", "namespaces", None, "", ""),
        ("create", "deployments", ns, "apps", ""), ("create", "serviceaccounts", ns, "", "token"),
        ("create", "clusterrolebindings", None, "rbac.authorization.k8s.io", ""),
        ("update", "leases", ns, "coordination.k8s.io", ""),
        ("update", "customresourcedefinitions", None, "apiextensions.k8s.io", ""),
    ]
    allowed = [d for d in denied if can_i(operator, d[0], d[1], d[2], d[3], d[4])]
    assert not allowed, f"the operator may do more than it needs: {allowed}"


def test_an_invalid_session_is_refused_with_a_clear_message(ns):
    kube = ns.kube
    for spec, words in ((dict(idleTimeout="soon"), "positive duration"),
                        (dict(idleTimeout="-5m"), "positive duration"),
                        (dict(kernel={"image": ""}), "image")):
        with pytest.raises(ApiError) as refused:
            create_session(kube, ns, "bad", **spec)
        assert refused.value.status == 422 and words in str(refused.value), refused.value
    with pytest.raises(ApiError) as refused:
        create_session(kube, ns, "9lives")
    assert refused.value.status == 422 and "DNS-1035" in str(refused.value)


def wait_healthz(op, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        assert op.alive(), op.log()[-3000:]
        try:
            if requests.get(op.metrics_url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "no /healthz"
        time.sleep(0.1)


def leader_waits(op) -> float:
    found = re.search(r"^notebook_operator_leader_election_waits_total (\S+)$", op.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def test_a_second_replica_waits_for_the_lease_then_takes_over_and_replaces_no_pod(ns, operator, operator_factory):
    kube = ns.kube
    create_session(kube, ns, "steady")
    wait_ready(kube, ns, "steady")
    pod_uid = kube.get(path("Pod", ns, "steady-kernel"))["metadata"]["uid"]
    standby = operator_factory("tier4-standby").start()
    try:
        wait_healthz(standby)
        # The witness that it could have taken over: two attempts that found
        # the Lease held (the retry period is 2 s).
        wait_until(lambda: leader_waits(standby) >= 2, timeout=30, what="the standby tried the Lease twice")
        assert operator.holder() == operator.identity
        assert re.search(r"^notebook_operator_leader 0$", standby.metrics(), re.M), standby.metrics()
        # The leader stops (SIGTERM releases the Lease): the standby takes
        # over and reconciles.
        operator.stop()
        standby.wait_leader(timeout=30)
        create_session(kube, ns, "later")
        wait_ready(kube, ns, "later")
        assert kube.get(path("Pod", ns, "steady-kernel"))["metadata"]["uid"] == pod_uid, \
            "a new leader must not replace the pods of the old one"
        assert not refusals(standby.log()), "the standby was refused:\n" + "\n".join(refusals(standby.log())[:5])
    finally:
        standby.stop()
        operator.start()
        operator.wait_leader(timeout=60)
    s = wait_ready(kube, ns, "steady")
    assert kube.get(path("Pod", ns, "steady-kernel"))["metadata"]["uid"] == pod_uid
    assert s["status"]["podName"] == "steady-kernel"


def test_a_missing_lease_namespace_is_named_once_with_the_ways_on_and_once_created_the_operator_leads(
        cluster, kube, crds, operator_factory):
    """Issue 18: out of a cluster, with a kubeconfig, the namespace of the
    leader Lease may not exist. The operator says so once, with what to do,
    and exits non-zero (as it does for a missing CRD) instead of a warning
    every 2 s; once the namespace exists it takes the Lease there."""
    lease_ns = f"nbo-lease-{int(time.time() * 1000) % 10**8}"
    # Its controllers watch only an empty namespace of their own, so a leader
    # here touches nothing another operator of this run reconciles.
    watch_ns = f"{lease_ns}-watch"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": watch_ns}})
    args = without_flags(operator_factory.args, "--leader-election-namespace", "--namespace") + [
        f"--leader-election-namespace={lease_ns}", f"--namespace={watch_ns}"]
    # The admin's kubeconfig, as a developer runs it: the ServiceAccount's
    # Role is only in its own namespace, so it would be refused (403) first.
    dev = operator_factory("tier4-dev", kubeconfig=cluster.kubeconfig, args=args)
    advice = re.compile(rf'namespace "{re.escape(lease_ns)}" of the leader Lease does not exist')
    try:
        dev.start()
        # The positive witness: it exits, within a few seconds, having named
        # the namespace and the three ways on.
        try:
            code = dev.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the operator still runs 15 s on without the Lease namespace:\n{dev.log()[-3000:]}")
        log = re.sub(r"\x1b\[[0-9;]*m", "", dev.log())
        assert code != 0, f"exit {code}:\n{log[-3000:]}"
        assert len(advice.findall(log)) == 1, log[-3000:]
        for way in (f"`kubectl create namespace {lease_ns}`", "`--leader-election-namespace <namespace>`",
                    "`--leader-election=false`"):
            assert way in log, f"{way} missing:\n{log[-3000:]}"
        assert "leader election attempt failed" not in log, log[-3000:]

        # With the namespace created, the same command leads.
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": lease_ns}})
        offset = dev.log_path.stat().st_size
        dev.start()
        wait_until(lambda: ((kube.get_opt(path("Lease", lease_ns, dev.lease)) or {}).get("spec") or {})
                   .get("holderIdentity") == dev.identity,
                   timeout=60, step=0.2, what=f"tier4-dev holds the Lease in {lease_ns}")
        assert dev.alive(), dev.log_since(offset)[-3000:]
        assert "became the leader" in dev.log_since(offset)
        assert not advice.search(dev.log_since(offset)), dev.log_since(offset)[-3000:]
    finally:
        dev.stop()
        for name in (lease_ns, watch_ns):
            kube.delete(path("Namespace", None, name))


def test_a_foreground_deletion_shows_terminating_until_the_children_are_gone(ns):
    kube = ns.kube
    create_session(kube, ns, "fg", storage={"size": "1Gi"})
    wait_ready(kube, ns, "fg")
    kube.delete(path("NotebookSession", ns, "fg"), propagation="Foreground")
    s = wait_session(kube, ns, "fg", lambda s: s is None or phase(s) == "Terminating", timeout=30,
                     what="phase Terminating during the foreground deletion")
    assert s is not None, "the session went before its pod: the owner references do not block its deletion"
    assert cond(s, "Ready")["reason"] == "Terminating"
    wait_gone(kube, "NotebookSession", ns, "fg")
    # Foreground: the dependents went first.
    for kind, name in (("Pod", "fg-kernel"), ("Service", "fg"), ("Secret", "fg-token")):
        assert kube.get_opt(path(kind, ns, name)) is None, f"{kind} {name} outlived its session"
