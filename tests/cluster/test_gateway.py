"""Tier 4: the gateway (`notebook-operator gateway`) as agents use it.

The gateway runs with exactly the chart's gateway RBAC (conftest `gateway`).
Agents are ServiceAccounts of fresh namespaces, bound by a Role on
notebooksessions, with tokens from `kubectl create token`; they talk to the
gateway with the official MCP Python SDK and plain HTTP. What they may do is
what Kubernetes RBAC says, and the sessions they create are real
NotebookSessions run by the operator and the stand-in kubelet.
"""
from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import statistics
import sys
import threading
import time

import anyio
import httpx
import pytest
import requests
import websocket
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import (GATEWAY_ALLOWED_ORIGIN, GATEWAY_FULLNAME, GATEWAY_INGRESS_HOST, GATEWAY_MAX_SESSIONS_PER_USER,
                      OPERATOR_NS, ROOT, make_namespace)
from affinity_proxy import AffinityProxy
from harness import sse_event
from kube import Kube, path
from sessions import READY_TIMEOUT, SidecarApi, get_session, session_obj, wait_ready

SESSION_VERBS = ["get", "list", "watch", "create", "delete", "patch"]
# A kernel image the stand-in kubelet never starts (ImagePullBackOff): the
# session and its pod exist, nothing runs. For tests that need objects, not kernels.
NEVER_STARTS = "quay.io/jupyter/does-not-exist:1"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def gateway_held_its_rbac(gateway):
    """After every test: the gateway still runs, and the apiserver never
    refused the gateway's own identity (the chart's RBAC was enough)."""
    offset = gateway.log_size()
    yield
    assert gateway.alive(), f"the gateway exited with {gateway.proc.returncode}:\n{gateway.log()[-5000:]}"
    refused = gateway.own_refusals(gateway.log_since(offset))
    assert not refused, "the gateway's own token was refused by RBAC:\n" + "\n".join(refused[:20])


@pytest.fixture
def ns_b(request, kube, cluster, kubelet, operator):
    """A second fresh namespace (B), where the agents of `ns` (A) have no rights."""
    yield from make_namespace(request, kube, cluster, kubelet, operator)


class Agent:
    """A ServiceAccount of namespace `ns` with a Role on notebooksessions there."""

    def __init__(self, ns, name: str, verbs=SESSION_VERBS):
        kube, cluster = ns.kube, ns.cluster
        self.ns, self.name = str(ns), name
        self.username = f"system:serviceaccount:{ns}:{name}"
        kube.create(path("ServiceAccount", ns), {"apiVersion": "v1", "kind": "ServiceAccount",
                                                  "metadata": {"name": name, "namespace": str(ns)}})
        if verbs:
            kube.create(path("Role", ns), {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": f"{name}-sessions", "namespace": str(ns)},
                "rules": [{"apiGroups": ["notebook.dev"], "resources": ["notebooksessions"], "verbs": list(verbs)}]})
            kube.create(path("RoleBinding", ns), {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": f"{name}-sessions", "namespace": str(ns)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-sessions"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": str(ns)}]})
        self.token = cluster.kubectl("-n", ns, "create", "token", name, "--duration=2h").strip()
        self.kube = Kube(cluster.env["NBO_APISERVER"], cluster.env["NBO_CA"], token=self.token)
        # The RBAC authorizer learns of new bindings through its informers:
        # wait until the apiserver itself says yes, so that the gateway's
        # first SubjectAccessReview (cached for the review TTL) does not race it.
        deadline = time.monotonic() + 30
        while verbs and not self.can_i(verbs[0], str(ns)):
            assert time.monotonic() < deadline, f"RBAC never allowed {self.username} to {verbs[0]} in {ns}"
            time.sleep(0.1)

    def can_i(self, verb: str, namespace: str, resource: str = "notebooksessions") -> bool:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"verb": verb, "resource": resource,
                                                  "group": "notebook.dev", "namespace": namespace}}}
        return self.kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)["status"]["allowed"]

    def grant(self, ns, resource: str, verbs: list[str]):
        """A second Role (and binding) of this agent: verbs on resource in ns;
        returns once the apiserver's RBAC says yes to the first verb."""
        kube, role = ns.kube, f"{self.name}-{resource}"
        kube.create(path("Role", ns), {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": role, "namespace": str(ns)},
            "rules": [{"apiGroups": ["notebook.dev"], "resources": [resource], "verbs": list(verbs)}]})
        kube.create(path("RoleBinding", ns), {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": str(ns)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": self.name, "namespace": self.ns}]})
        deadline = time.monotonic() + 30
        while not self.can_i(verbs[0], str(ns), resource):
            assert time.monotonic() < deadline, f"RBAC never allowed {self.username} to {verbs[0]} {resource} in {ns}"
            time.sleep(0.1)

    def http(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s


# -- MCP through the gateway ----------------------------------------------------------------------
@contextlib.asynccontextmanager
async def mcp_at(url: str, token: str | None, extra_headers: dict | None = None):
    """An initialized MCP ClientSession (official SDK) at url with that bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(extra_headers or {})
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                with anyio.fail_after(60):
                    session.init_result = await session.initialize()
                yield session


def call(gateway, token: str | None, name: str, args: dict | None = None, timeout: float = 120):
    """One tool call in a fresh MCP session, bounded in time."""
    async def main():
        with anyio.fail_after(timeout):
            async with mcp_at(gateway.url + "/mcp", token) as session:
                return await session.call_tool(name, args or {})
    return anyio.run(main)


def calls(gateway, token: str, steps, timeout: float = 300):
    """Several tool calls in one MCP session: steps is a list of (name, args)
    or callables taking the results so far and returning (name, args)."""
    async def main():
        out = []
        with anyio.fail_after(timeout):
            async with mcp_at(gateway.url + "/mcp", token) as session:
                for step in steps:
                    name, args = step(out) if callable(step) else step
                    out.append(await session.call_tool(name, args))
        return out
    return anyio.run(main)


def texts(result) -> list[str]:
    return [c.text for c in result.content if c.type == "text"]


def ok(result) -> dict:
    """The JSON of a successful tool result (structuredContent, same as its text)."""
    assert not result.is_error, texts(result)
    data = result.structured_content
    assert isinstance(data, dict), (data, texts(result))
    return data


def refused(result, *words: str) -> str:
    """The text of a tool result that is an error and says all of words (any case)."""
    assert result.is_error, f"expected a refusal, got {texts(result)}"
    text = " ".join(texts(result))
    for w in words:
        assert w.lower() in text.lower(), f"{w!r} not in {text!r}"
    return text


def sessions_in(kube, ns) -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.list(path("NotebookSession", ns)))


def wait_gone(kube, kind, ns, name, timeout=60):
    kube.wait_for(kind, ns, name, lambda o: o is None, timeout, f"{kind} {ns}/{name} gone")


# -- the gateway's own rights --------------------------------------------------------------------
def gateway_can(gateway, verb, resource, ns=None, group="", sub="", name="") -> bool:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "group": group,
                                              "subresource": sub, "namespace": ns or "", "name": name}}}
    return gateway.kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)["status"]["allowed"]


def test_the_gateway_holds_the_chart_rbac_and_no_more(ns, gateway):
    """Every gateway test proves the chart's RBAC is enough (no refusal of the
    gateway's identity in its log); this one checks what its token must not do:
    callers reach kernels only through it, so it must not become a way around RBAC."""
    allowed = [("create", "tokenreviews", None, "authentication.k8s.io", ""),
               ("create", "subjectaccessreviews", None, "authorization.k8s.io", ""),
               ("get", "secrets", ns, "", ""), ("get", "pods", ns, "", ""),
               *[(v, "notebooksessions", ns, "notebook.dev", "") for v in SESSION_VERBS],
               ("list", "notebookpools", ns, "notebook.dev", ""),
               ("create", "leases", OPERATOR_NS, "coordination.k8s.io", ""),
               *[(v, "leases", OPERATOR_NS, "coordination.k8s.io", "", f"{GATEWAY_FULLNAME}-cap-{i}")
                 for v in ("get", "update") for i in (0, 15)]]
    missing = [a for a in allowed if not gateway_can(gateway, *a)]
    assert not missing, f"the gateway lacks what it needs: {missing}"
    denied = [
        ("list", "secrets", ns, "", ""), ("watch", "secrets", ns, "", ""), ("create", "secrets", ns, "", ""),
        ("update", "secrets", ns, "", ""), ("list", "pods", ns, "", ""), ("create", "pods", ns, "", ""),
        ("delete", "pods", ns, "", ""), ("create", "pods", ns, "", "exec"), ("create", "pods", ns, "", "portforward"),
        ("get", "pods", ns, "", "log"), ("update", "notebooksessions", ns, "notebook.dev", ""),
        ("patch", "notebooksessions", ns, "notebook.dev", "status"), ("delete", "assetleases", ns, "notebook.dev", ""),
        *[(v, "notebookpools", ns, "notebook.dev", "") for v in ("get", "watch", "create", "patch", "delete")],
        ("patch", "notebookpools", ns, "notebook.dev", "status"),
        ("create", "serviceaccounts", ns, "", "token"), ("impersonate", "users", None, "", ""),
        ("impersonate", "serviceaccounts", ns, "", ""), ("create", "rolebindings", ns, "rbac.authorization.k8s.io", ""),
        ("list", "nodes", None, "", ""), ("delete", "namespaces", None, "", ""), ("create", "deployments", ns, "apps", ""),
        # The cap ledgers are 16 named Leases of the gateway's namespace: not
        # the operator's leader Lease beside them, nor any in other namespaces.
        ("create", "leases", ns, "coordination.k8s.io", ""), ("update", "leases", ns, "coordination.k8s.io", ""),
        ("delete", "leases", OPERATOR_NS, "coordination.k8s.io", ""),
        ("list", "leases", OPERATOR_NS, "coordination.k8s.io", ""),
        ("update", "leases", OPERATOR_NS, "coordination.k8s.io", "", "notebook-operator-leader"),
        ("update", "leases", OPERATOR_NS, "coordination.k8s.io", "", f"{GATEWAY_FULLNAME}-cap-16"),
    ]
    extra = [d for d in denied if gateway_can(gateway, *d)]
    assert not extra, f"the gateway may do more than it needs: {extra}"


# -- create, use, delete ----------------------------------------------------------------------------
def test_agent_session_roundtrip(ns, gateway, kube, capsys):
    """create_session waits for Ready; execute and a notebook run through the
    gateway; delete_session waits until the session and its pod are gone."""
    agent = Agent(ns, "agent")
    created = ok(call(gateway, agent.token, "create_session", {"namespace": str(ns), "wait_ready_s": READY_TIMEOUT},
                      timeout=READY_TIMEOUT + 60))
    name = created["name"]
    assert created["namespace"] == ns and re.fullmatch(r"nb-[a-z0-9]+", name), created
    assert created["ready"] is True, f"not Ready after wait_ready_s={READY_TIMEOUT}: {created}"
    assert created["phase"] == "Ready" and created["suspended"] is False, created
    assert created["requested_by"] == agent.username, created
    assert created["url"] == f"/sessions/{ns}/{name}", created
    assert created.get("created_at"), created

    # The object is the request, and names who asked.
    obj = get_session(kube, ns, name)
    assert obj["metadata"]["annotations"]["notebook.dev/requested-by"] == agent.username
    label = obj["metadata"]["labels"]["notebook.dev/requested-by"]
    assert len(label) <= 63 and LABEL_VALUE.match(label), label
    alnum = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())  # noqa: E731
    assert alnum(agent.username).startswith(alnum(label)[:40]), (label, agent.username)
    selected = kube.list(path("NotebookSession", ns), labelSelector=f"notebook.dev/requested-by={label}")
    assert [o["metadata"]["name"] for o in selected] == [name]

    nb = "gw/forty-two.ipynb"
    got = calls(gateway, agent.token, [
        ("get_session", {"name": name, "namespace": str(ns)}),
        ("list_sessions", {"namespace": str(ns)}),
        ("list_sessions", {}),  # a ServiceAccount's default namespace is its own
        ("execute", {"session": name, "namespace": str(ns), "code": "1+1"}),
        ("execute", {"session": f"{ns}/{name}", "code": "print('via ns/name')"}),
        ("create_notebook", {"session": name, "namespace": str(ns), "path": nb}),
        ("insert_cell", {"session": name, "namespace": str(ns), "path": nb, "source": "x = 21*2\nprint(x)"}),
        lambda out: ("run_cell", {"session": name, "namespace": str(ns), "path": nb,
                                  "cell_id": ok(out[-1])["cell_id"]}),
        ("read_notebook", {"session": name, "namespace": str(ns), "path": nb}),
        ("kernel_status", {"session": name, "namespace": str(ns)}),
    ])
    (got_one, listed, listed_default, one_plus_one, printed, nb_created, inserted, ran, read, kernel) = got
    assert ok(got_one)["name"] == name and ok(got_one)["ready"] is True
    for lst in (listed, listed_default):
        summaries = ok(lst)["sessions"]
        assert [s["name"] for s in summaries] == [name], summaries
        assert summaries[0]["requested_by"] == agent.username
    assert not one_plus_one.is_error, texts(one_plus_one)
    head = json.loads(texts(one_plus_one)[0])
    assert head["state"] == "completed", head
    assert "2" in texts(one_plus_one)[1:], texts(one_plus_one)
    assert texts(printed)[1:] == ["via ns/name\n"], texts(printed)
    ok(nb_created)
    cell_id = ok(inserted)["cell_id"]
    assert not ran.is_error, texts(ran)
    assert "42\n" in texts(ran)[1:], texts(ran)
    cells = {c["id"]: c for c in ok(read)["cells"]}
    assert cells[cell_id]["source"] == "x = 21*2\nprint(x)", cells
    assert cells[cell_id]["outputs"][0]["text"] == "42\n", cells[cell_id]
    assert not kernel.is_error, texts(kernel)

    # The result of a forwarded tool is the sidecar's own: the execution is a
    # durable record there, readable over the forwarded HTTP routes too.
    http = agent.http()
    base = f"{gateway.url}/sessions/{ns}/{name}"
    r = http.get(f"{base}/v1/executions/{head['id']}", timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["state"] == "completed" and r.json()["outputs"][0]["data"]["text/plain"] == "2"
    direct = SidecarApi(kube, ns, name)
    assert direct.get(head["id"])["outputs"] == r.json()["outputs"]
    r = http.get(f"{base}/v1/status", timeout=30)
    assert r.status_code == 200 and r.json()["queue"]["completed"] >= 3, r.text
    # The gateway never hands out the sidecar's token.
    for res in got:
        assert direct.token not in json.dumps(res.model_dump(mode="json")), "the sidecar token leaked"

    t0 = time.monotonic()
    deleted = ok(call(gateway, agent.token, "delete_session", {"name": name, "namespace": str(ns), "wait_s": 120},
                      timeout=180))
    with capsys.disabled():
        print(f"\n[gateway] create_session waited {created['waited_s']:.1f}s for Ready; "
              f"delete_session took {time.monotonic() - t0:.1f}s until the session and its pod were gone")
    assert deleted == {**deleted, "namespace": str(ns), "name": name, "deleted": True, "gone": True}, deleted
    assert kube.get_opt(path("NotebookSession", ns, name)) is None, "gone: true, but the session is still there"
    assert kube.get_opt(path("Pod", ns, f"{name}-kernel")) is None, "gone: true, but the kernel pod is still there"
    r = http.get(f"{base}/v1/status", timeout=30)
    assert r.status_code == 404, (r.status_code, r.text)
    assert ok(call(gateway, agent.token, "list_sessions", {"namespace": str(ns)}))["sessions"] == []


# -- who may not ------------------------------------------------------------------------------------
def test_create_session_takes_a_warm_kernel_from_a_pool(ns, gateway, kube):
    """Issue 17: create_session{pool} makes a session with poolRef; it gets
    one of the pool's warm pods and answers through the gateway."""
    from test_pools import create_pool, wait_pool, warm_pods
    agent = Agent(ns, "pooled")
    create_pool(kube, ns, "gw-warm", 1)
    wait_pool(kube, ns, "gw-warm", lambda st: st.get("ready") == 1, READY_TIMEOUT, "1 ready")
    warm = {p["metadata"]["name"] for p in warm_pods(kube, ns, "gw-warm")}
    refusal = refused(call(gateway, agent.token, "create_session",
                           {"namespace": str(ns), "pool": "gw-warm", "image": "img:1"}), "pool:", "image")
    assert sessions_in(kube, ns) == [], refusal
    created = ok(call(gateway, agent.token, "create_session",
                      {"namespace": str(ns), "name": "from-pool", "pool": "gw-warm", "wait_ready_s": READY_TIMEOUT},
                      timeout=READY_TIMEOUT + 60))
    assert created["ready"] is True, created
    s = get_session(kube, ns, "from-pool")
    assert s["spec"]["poolRef"] == {"name": "gw-warm"}, s["spec"]
    assert s["status"]["podName"] in warm, (s["status"]["podName"], warm)
    answer = call(gateway, agent.token, "execute", {"session": "from-pool", "namespace": str(ns), "code": "6*7"})
    assert not answer.is_error and "42" in texts(answer)[1:], texts(answer)


def test_list_pools_shows_what_may_be_claimed_to_callers_who_may_list_notebookpools(ns, ns_b, gateway, kube):
    """Issue 17: list_pools answers each NotebookPool of the namespace with its
    image, replicas, ready, warm and claimed counts and its Ready condition,
    to a caller whom RBAC lets list notebookpools there; a caller who may
    only use sessions is refused, and learns nothing about the pools."""
    from test_pools import KERNEL, create_pool, pooled_session, wait_pool
    lister = Agent(ns, "lister")
    lister.grant(ns, "notebookpools", ["list"])
    plain = Agent(ns, "plain")  # notebooksessions only
    create_pool(kube, ns, "gw-list", 1)
    create_pool(kube, ns, "gw-empty", 0)
    wait_pool(kube, ns, "gw-list", lambda st: st.get("ready") == 1, READY_TIMEOUT, "1 ready")
    pooled_session(kube, ns, "claimer", "gw-list")
    wait_ready(kube, ns, "claimer")
    wait_pool(kube, ns, "gw-list", lambda st: st.get("ready") == 1 and st.get("claimed") == 1, READY_TIMEOUT,
              "refilled to 1 ready, 1 claimed")
    wait_pool(kube, ns, "gw-empty", lambda st: "conditions" in st, 60, "a status")

    listed, listed_default = calls(gateway, lister.token, [("list_pools", {"namespace": str(ns)}),
                                                           ("list_pools", {})])
    for answer in (listed, listed_default):  # a ServiceAccount's default namespace is its own
        assert ok(answer)["namespace"] == ns, ok(answer)
        pools = {p["name"]: p for p in ok(answer)["pools"]}
        assert sorted(pools) == ["gw-empty", "gw-list"], pools
        for name, want_replicas in (("gw-list", 1), ("gw-empty", 0)):
            obj = kube.get(path("NotebookPool", ns, name))
            st, ready = obj["status"], next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
            got = pools[name]
            assert (got["namespace"], got["image"], got["replicas"]) == (ns, KERNEL["image"], want_replicas), got
            assert (got["ready"], got["warm"], got["claimed"]) == (st["ready"], st["warm"], st["claimed"]), (got, st)
            assert got["condition"] == {k: ready[k] for k in ("status", "reason", "message")}, (got, ready)
            assert got["stale"] is False and got["deleting"] is False, got
    counted = {p["name"]: p for p in ok(listed)["pools"]}
    assert (counted["gw-list"]["ready"], counted["gw-list"]["claimed"]) == (1, 1), counted["gw-list"]
    assert counted["gw-list"]["condition"]["status"] == "True", counted["gw-list"]
    assert (counted["gw-empty"]["ready"], counted["gw-empty"]["claimed"]) == (0, 0), counted["gw-empty"]

    # Sessions only: refused, saying what is missing, and naming no pool.
    text = refused(call(gateway, plain.token, "list_pools", {"namespace": str(ns)}),
                   "forbidden", plain.username, "list notebookpools", str(ns))
    assert "gw-list" not in text and "gw-empty" not in text, text
    # The lister's Role is in its own namespace only.
    refused(call(gateway, lister.token, "list_pools", {"namespace": str(ns_b)}),
            "forbidden", "list notebookpools", str(ns_b))
    refused(call(gateway, lister.token, "list_pools", {"namespace": "Not_A_Namespace"}), "not a namespace")
    # And the right to list pools gives no right to sessions: the refusal of a
    # session tool still names notebooksessions.
    refused(call(gateway, plain.token, "list_sessions", {"namespace": str(ns_b)}), "forbidden", "notebooksessions")


def forged_jwt() -> str:
    """JWT-shaped, never signed by the cluster: a ServiceAccount's claims and random bytes."""
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    head = b64(json.dumps({"alg": "RS256", "kid": secrets.token_hex(8)}).encode())
    body = b64(json.dumps({"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:kube-system:admin",
                           "aud": ["https://kubernetes.default.svc"], "exp": int(time.time()) + 3600}).encode())
    return f"{head}.{body}.{b64(secrets.token_bytes(256))}"


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "tier4", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_refusals_by_token_and_rbac(ns, ns_b, gateway, kube):
    a, b = str(ns), str(ns_b)
    agent = Agent(ns, "agent")
    reader = Agent(ns, "reader", verbs=["get", "list"])

    # Probes need no token.
    for probe in ("/healthz", "/readyz"):
        assert requests.get(gateway.url + probe, timeout=10).status_code == 200, probe

    # RBAC: the agent may create in A only.
    r = call(gateway, agent.token, "create_session", {"namespace": b, "name": "intruder"})
    refused(r, "forbidden")
    assert sessions_in(kube, b) == [], "a refused create_session created a session"
    r = call(gateway, agent.token, "list_sessions", {"namespace": b})
    refused(r, "forbidden")
    # A Role with get and list only: listing works, creating does not.
    assert ok(call(gateway, reader.token, "list_sessions", {"namespace": a}))["sessions"] == []
    refused(call(gateway, reader.token, "create_session", {"namespace": a, "name": "nope"}), "forbidden")
    assert sessions_in(kube, a) == []

    # No token, and tokens the cluster never issued: 401 on every route but
    # the probes, before anything else happens.
    forged = {"none": None, "jwt": forged_jwt(), "random": secrets.token_urlsafe(32),
              "agent-token-tampered": agent.token[:-6] + ("AAAAAA" if not agent.token.endswith("AAAAAA") else "BBBBBB")}
    for what, token in forged.items():
        auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
        r = requests.post(gateway.url + "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **auth}, timeout=30)
        assert r.status_code == 401, (what, r.status_code, r.text)
        assert "error" in r.json(), (what, r.text)
        for method, route in (("GET", f"/sessions/{a}/x/v1/status"), ("POST", f"/sessions/{a}/x/v1/executions"),
                              ("GET", f"/sessions/{b}/x/v1/events?since=0")):
            r = requests.request(method, gateway.url + route, headers=auth, json={"code": "1"}, timeout=30)
            assert r.status_code == 401, (what, method, route, r.status_code, r.text)
        # The official SDK gives up at once (no retry loop, no hang).
        t0 = time.monotonic()
        with pytest.raises(BaseException) as raised:  # an ExceptionGroup around the SDK's MCPError
            call(gateway, token, "create_session", {"namespace": a, "name": "anon"}, timeout=60)
        assert not isinstance(raised.value, (TimeoutError, KeyboardInterrupt)), raised.value
        assert time.monotonic() - t0 < 30, f"{what}: the refusal took {time.monotonic() - t0:.1f}s"
    # A Basic header is not a bearer token either.
    r = requests.get(f"{gateway.url}/sessions/{a}/x/v1/status", auth=("admin", "admin"), timeout=30)
    assert r.status_code == 401, r.text
    assert sessions_in(kube, a) == [] and sessions_in(kube, b) == [], "a refused caller created something"

    # Kernel access in B: the session exists there (created by an admin), the
    # agent has no rights in B, so 403, whatever the route, stream or MCP tool.
    kube.create(path("NotebookSession", b), session_obj(b, "target", kernel={"image": NEVER_STARTS}))
    http = agent.http()
    for method, route in (("GET", "v1/status"), ("POST", "v1/executions"), ("GET", "v1/events?since=0"),
                          ("GET", "v1/executions"), ("POST", "v1/kernel/restart")):
        # A connection each: see test_a_refused_request_with_a_body_keeps_or_closes_its_connection_cleanly.
        r = requests.request(method, f"{gateway.url}/sessions/{b}/target/{route}", json={"code": "1"},
                             headers={"Authorization": f"Bearer {agent.token}"}, timeout=30)
        assert r.status_code == 403, (method, route, r.status_code, r.text)
        assert "error" in r.json() and "forbidden" in r.json()["error"], r.text
    # A session in B that does not exist is 403 too: no existence oracle.
    r = http.get(f"{gateway.url}/sessions/{b}/no-such-session/v1/status", timeout=30)
    assert r.status_code == 403, (r.status_code, r.text)
    # ... while in A, where the agent may get, it is 404.
    r = http.get(f"{gateway.url}/sessions/{a}/no-such-session/v1/status", timeout=30)
    assert r.status_code == 404, (r.status_code, r.text)
    with pytest.raises(websocket.WebSocketBadStatusException) as ws_refused:
        websocket.create_connection(f"ws://127.0.0.1:{gateway.port}/sessions/{b}/target/v1/events/ws?since=0",
                                    header=[f"Authorization: Bearer {agent.token}"], timeout=30)
    assert ws_refused.value.status_code == 403
    for tool, args in (("execute", {"session": f"{b}/target", "code": "1+1"}),
                       ("execute", {"session": "target", "namespace": b, "code": "1+1"}),
                       ("get_session", {"name": "target", "namespace": b}),
                       ("delete_session", {"name": "target", "namespace": b, "wait_s": 1}),
                       ("suspend_session", {"name": "target", "namespace": b})):
        refused(call(gateway, agent.token, tool, args), "forbidden")
    s = get_session(kube, b, "target")
    assert s is not None and not s["metadata"].get("deletionTimestamp") and not s["spec"].get("suspend"), s
    assert sessions_in(kube, a) == [] and sessions_in(kube, b) == ["target"]


def raw_exchange(sock, request: bytes, body: bytes = b"", timeout: float = 30) -> tuple[int, dict, bytes]:
    """Sends one HTTP/1.1 request on sock, its body in a second write a moment
    after the head (as clients do, so the server may answer before the body
    arrived), and reads one response (Content-Length bodies)."""
    sock.sendall(request)
    if body:
        time.sleep(0.1)
        sock.sendall(body)
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_refused_request_with_a_body_keeps_or_closes_its_connection_cleanly(ns, ns_b, gateway, kube):
    """An agent's HTTP client reuses connections (requests.Session, httpx). A
    request with a body that the gateway refuses (403, 404) must leave the
    connection usable, or say `Connection: close` when the gateway closes it
    (RFC 9112 9.6); closing silently makes the client's next request on it
    fail with 'Remote end closed connection without response'."""
    import socket
    agent = Agent(ns, "agent")
    kube.create(path("NotebookSession", ns_b), session_obj(ns_b, "target", kernel={"image": NEVER_STARTS}))
    body = json.dumps({"code": "print('x')\n" * 200}).encode()
    silent = []
    for route, want in ((f"/sessions/{ns_b}/target/v1/executions", 403),
                        (f"/sessions/{ns}/no-such-session/v1/executions", 404)):
        for attempt in range(3):  # the first answer may wait for the review; later ones come from its cache
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
                status, headers, _ = raw_exchange(sock, (
                    f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
                    f"Authorization: Bearer {agent.token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode(), body)
                assert status == want, (route, status, headers)
                says_close = headers.get("connection", "").lower() == "close"
                time.sleep(0.3)
                sock.setblocking(False)
                try:
                    closed = sock.recv(1) == b""
                except BlockingIOError:
                    closed = False
                if closed and not says_close:
                    silent.append((route, status, attempt))
                if not closed:
                    # Still open: it must serve the next request.
                    sock.setblocking(True)
                    status, _, _ = raw_exchange(sock, (
                        f"GET /sessions/{ns}/no-such-session/v1/status HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
                        f"Authorization: Bearer {agent.token}\r\n\r\n").encode())
                    assert status == 404, status
    assert not silent, f"the gateway closed the connection after these answers without Connection: close: {silent}"


# -- the event stream through the gateway -----------------------------------------------------------
class SseReader:
    """GET .../v1/events through the gateway, parsed as SSE, in a thread; the
    test decides when to disconnect."""

    def __init__(self, http: requests.Session, url: str, *, since: int | None = None, last_event_id: int | None = None):
        params = {"since": since} if since is not None else None
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.r = http.get(url, params=params, headers=headers, stream=True, timeout=(10, 60))
        self.status = self.r.status_code
        self.content_type = self.r.headers.get("content-type", "")
        self.events: list[tuple[int | None, dict]] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self.thread.start()

    def _read(self):
        buf = b""
        try:
            for chunk in self.r.iter_content(chunk_size=None):
                buf += chunk.replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    event = sse_event(block)
                    if event is not None:
                        with self.lock:
                            self.events.append(event)
        except BaseException as e:  # noqa: BLE001
            if not self.closed:
                self.error = e

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                evs = list(self.events)
            if predicate(evs):
                return evs
            assert self.error is None, f"the stream broke while waiting for {what}: {self.error!r}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}; got {len(evs)} events: {evs[-5:]}"
            time.sleep(0.02)

    def close(self):
        self.closed = True
        self.r.close()
        self.thread.join(timeout=10)


def finished(eid):
    return lambda evs: any(e.get("type") == "finished" and e.get("execution_id") == eid for _, e in evs)


def test_sse_through_the_gateway_resumes_with_since(ns, gateway, kube):
    """A client reading the session's stream through the gateway disconnects
    mid-way and resumes with since=<last seq>: the two reads together hold
    every printed line once, in order, with no gap; Last-Event-ID and the
    WebSocket route give the same events."""
    agent = Agent(ns, "agent")
    kube.create(path("NotebookSession", ns), session_obj(ns, "stream"))
    wait_ready(kube, ns, "stream")
    http = agent.http()
    base = f"{gateway.url}/sessions/{ns}/stream"
    r = http.get(base + "/v1/status", timeout=30)
    assert r.status_code == 200, r.text
    start = r.json()["events"]["newest_seq"]

    first = SseReader(http, base + "/v1/events", since=start)
    assert first.status == 200 and first.content_type.startswith("text/event-stream"), (first.status, first.content_type)
    n_exec, per_exec = 5, 40
    code = ("import time\nfor i in range({a}, {b}):\n    print(f'line {{i:04d}}', flush=True)\n"
            "    time.sleep(0.03)\n")
    ids = []
    for k in range(n_exec):
        r = http.post(base + "/v1/executions", json={"code": code.format(a=k * per_exec, b=(k + 1) * per_exec),
                                                     "key": f"sse-{k}"}, timeout=30)
        assert r.status_code == 202, (r.status_code, r.text)
        ids.append(r.json()["id"])
    # Some output arrives while the work goes on (the gateway streams, it
    # does not buffer the response), then the client goes away.
    got1 = first.wait(lambda evs: sum(e.get("type") == "output" for _, e in evs) >= 8, 120, "8 output events")
    r = http.get(f"{base}/v1/executions/{ids[-1]}", timeout=30)
    assert r.status_code == 200 and r.json()["state"] in ("queued", "running"), \
        f"the first events came only after all the work was done: {r.text}"
    first.close()
    got1 = list(first.events)
    last_seen = got1[-1][0]
    assert last_seen is not None and all(i == e["seq"] for i, e in got1), "SSE id is the seq"

    for eid in ids:
        r = http.get(f"{base}/v1/executions/{eid}", params={"wait": 120}, timeout=150)
        assert r.status_code == 200 and r.json()["state"] == "completed", r.text
    second = SseReader(http, base + "/v1/events", since=last_seen)
    assert second.status == 200, second.status
    got2 = second.wait(finished(ids[-1]), 120, "the last execution's finished event")
    second.close()
    got2 = got2[:next(i for i, (_, e) in enumerate(got2) if finished(ids[-1])([(None, e)])) + 1]

    events = [e for _, e in got1 + got2]
    assert not [e for e in events if e["type"] == "gap"], "a gap event: the resume lost events"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(start + 1, start + 1 + len(seqs))), \
        f"not every event exactly once in order: first read {got1[0][0]}..{last_seen}, second from {got2[0][0]}"
    text = {eid: "" for eid in ids}
    for e in events:
        if e["type"] == "output" and e.get("execution_id") in text and e["output"].get("name") == "stdout":
            text[e["execution_id"]] += e["output"]["text"]
    lines = [line for eid in ids for line in text[eid].splitlines()]
    assert lines == [f"line {i:04d}" for i in range(n_exec * per_exec)], \
        f"{len(lines)} lines; first differences: {[l for l in lines if not l.startswith('line ')][:5]}"
    for eid in ids:
        kinds = [e["type"] for e in events if e.get("execution_id") == eid]
        assert kinds[0] == "queued" and kinds[-1] == "finished" and kinds.count("finished") == 1, kinds

    # Last-Event-ID instead of since: the same events.
    third = SseReader(http, base + "/v1/events", last_event_id=last_seen)
    assert third.status == 200, third.status
    got3 = third.wait(finished(ids[-1]), 60, "the finished event (Last-Event-ID)")
    third.close()
    assert [e for _, e in got3][:len(got2)] == [e for _, e in got2]
    # And the WebSocket route, forwarded the same way.
    ws = websocket.create_connection(f"ws://127.0.0.1:{gateway.port}/sessions/{ns}/stream/v1/events/ws?since={last_seen}",
                                     header=[f"Authorization: Bearer {agent.token}"], timeout=30)
    got_ws = []
    try:
        while not finished(ids[-1])([(None, e) for e in got_ws[-1:]]):
            got_ws.append(json.loads(ws.recv()))
    finally:
        ws.close()
    assert got_ws == [e for _, e in got2]


# -- the per-user cap -------------------------------------------------------------------------------
def test_progress_passes_through_and_a_sidecar_restart_is_survived(ns, gateway, kube):
    """The sidecar's progress notifications reach the agent through the
    gateway while execute waits. Then kill -9 of the session's sidecar: the
    kubelet restarts it, the kernel (and its variables) lives on, and the
    gateway's next kernel tool call works at once (it opens a new MCP
    session with the new sidecar)."""
    import psutil

    agent = Agent(ns, "agent")
    kube.create(path("NotebookSession", ns), session_obj(ns, "phoenix"))
    wait_ready(kube, ns, "phoenix")
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, message))

    async def with_progress():
        with anyio.fail_after(120):
            async with mcp_at(gateway.url + "/mcp", agent.token) as session:
                code = "import time\nx = 41\nfor i in range(8):\n    print('step', i, flush=True)\n    time.sleep(0.15)"
                return await session.call_tool("execute", {"session": "phoenix", "namespace": str(ns), "code": code},
                                               progress_callback=on_progress)
    first = anyio.run(with_progress)
    assert ok(first)["state"] == "completed", texts(first)
    assert len(seen) >= 2, f"progress notifications through the gateway: {seen}"
    values = [p for p, _ in seen]
    assert values == sorted(values), seen
    assert any("step" in (m or "") for _, m in seen), seen

    ip = kube.get(path("Pod", ns, "phoenix-kernel"))["status"]["podIP"]
    sidecars = [p for p in psutil.process_iter(["cmdline"])
                if "sidecar" in (p.info["cmdline"] or []) and any(ip + ":" in a for a in p.info["cmdline"] or [])]
    assert len(sidecars) == 1, [p.info["cmdline"] for p in sidecars]
    sidecars[0].kill()
    sidecars[0].wait(timeout=10)

    # Back when its own readiness route answers through the gateway.
    http = agent.http()
    deadline = time.monotonic() + 90
    while True:
        try:
            if http.get(f"{gateway.url}/sessions/{ns}/phoenix/readyz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the sidecar did not come back within 90 s"
        time.sleep(0.2)
    offset = gateway.log_size()
    again = call(gateway, agent.token, "execute", {"session": "phoenix", "namespace": str(ns), "code": "x + 1"})
    assert not again.is_error and "42" in texts(again)[1:], texts(again)
    assert "no longer knows its MCP session" in gateway.log_since(offset), \
        "the call did not go through a new MCP session with the restarted sidecar"

    # The session's own MCP endpoint, through the gateway's HTTP forwarding
    # (the agent's token, not the session's; tools without a session argument).
    async def per_session():
        with anyio.fail_after(60):
            async with mcp_at(f"{gateway.url}/sessions/{ns}/phoenix/mcp", agent.token) as session:
                names = {t.name for t in (await session.list_tools()).tools}
                return names, await session.call_tool("execute", {"code": "x + 2"})
    names, r = anyio.run(per_session)
    assert "execute" in names and "create_session" not in names, names
    assert not r.is_error and "43" in texts(r)[1:], texts(r)


def test_a_revoked_permission_stops_working_within_the_review_ttl(ns, gateway, kube, cluster):
    """Access reviews are cached for the chart's reviewTTL (10 s): once RBAC
    takes a right away, the gateway refuses within that TTL (plus the time
    the apiserver itself takes to notice), never later."""
    ttl = 10.0
    agent = Agent(ns, "fickle")
    assert ok(call(gateway, agent.token, "list_sessions", {"namespace": str(ns)}))["sessions"] == []
    kube.delete(path("RoleBinding", ns, "fickle-sessions"))
    deadline = time.monotonic() + 30
    while agent.can_i("list", str(ns)):
        assert time.monotonic() < deadline, "the apiserver kept allowing the revoked right"
        time.sleep(0.1)
    revoked = time.monotonic()
    while True:
        r = call(gateway, agent.token, "list_sessions", {"namespace": str(ns)})
        if r.is_error:
            refused(r, "forbidden", "list")
            break
        assert time.monotonic() - revoked < ttl + 3, \
            f"the gateway still allowed a revoked right {time.monotonic() - revoked:.1f}s later"
        time.sleep(0.5)


def test_a_gateway_with_a_token_audience_takes_only_tokens_minted_for_it(ns, gateway, cluster):
    """--token-audience: a token minted for that audience passes, the
    apiserver's default token does not (401), nor one for another audience."""
    from conftest import Gateway, without_flags

    agent = Agent(ns, "agent")
    strict = Gateway(gateway.admin, gateway.kube, gateway.kubeconfig, [], dict(gateway.env),
                     cluster.state / "gateway-audience.log", gateway.service_account)
    strict.args = without_flags(gateway.args, "--listen", "--metrics-listen") + ["--listen", f"127.0.0.1:{strict.port}", "--metrics-listen",
                          f"127.0.0.1:{strict.metrics_port}", "--token-audience", "nbo-gateway"]
    strict.start()
    try:
        minted = cluster.kubectl("-n", ns, "create", "token", "agent", "--audience", "nbo-gateway").strip()
        other = cluster.kubectl("-n", ns, "create", "token", "agent", "--audience", "someone-else").strip()
        listed = ok(call(strict, minted, "list_sessions", {"namespace": str(ns)}))
        assert listed["sessions"] == [], listed
        for what, token in (("the default audience", agent.token), ("another audience", other)):
            r = requests.post(strict.url + "/mcp", json={}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert r.status_code == 401, (what, r.status_code, r.text)
        # The gateway without the option takes the default token, as before.
        assert ok(call(gateway, agent.token, "list_sessions", {"namespace": str(ns)}))["sessions"] == []
    finally:
        strict.stop()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the gateway's /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_gateway_counts_what_it_answered_on_its_own_port(ns, ns_b, gateway):
    """/metrics is served on the metrics address only, and counts refusals,
    reviews and tool calls by outcome."""
    agent = Agent(ns, "agent")
    before = gateway.metrics()
    assert requests.get(gateway.url + "/metrics", timeout=10).status_code == 401, "metrics on the public port"
    assert requests.post(gateway.url + "/mcp", json={}, timeout=10).status_code == 401
    assert agent.http().get(f"{gateway.url}/sessions/{ns_b}/x/v1/status", timeout=10).status_code == 403
    ok(call(gateway, agent.token, "list_sessions", {"namespace": str(ns)}))
    refused(call(gateway, agent.token, "list_sessions", {"namespace": str(ns_b)}), "forbidden")
    after = gateway.metrics()

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)
    assert delta("notebook_gateway_requests_total", route="mcp", code="401") >= 1, after
    assert delta("notebook_gateway_requests_total", route="other", code="401") >= 1, after
    assert delta("notebook_gateway_requests_total", route="sessions", code="403") >= 1, after
    assert delta("notebook_gateway_tool_calls_total", tool="list_sessions", outcome="ok") == 1, after
    assert delta("notebook_gateway_tool_calls_total", tool="list_sessions", outcome="error") == 1, after
    denied = sum(delta("notebook_gateway_reviews_total", kind="access", outcome="denied", cached=c)
                 for c in ("true", "false"))
    assert denied >= 2, after
    assert delta("notebook_gateway_reviews_total", kind="token", outcome="allowed", cached="true") >= 1, \
        "the agent's token was reviewed again within the TTL"


def test_per_user_session_cap(ns, gateway, kube):
    """With --max-sessions-per-user 3, a user's 4th live session is refused;
    a suspended one does not count (resume_session makes it count again), a
    deleted one frees its slot, and other users have caps of their own."""
    cap = GATEWAY_MAX_SESSIONS_PER_USER
    assert cap == 3
    agent = Agent(ns, "agent")
    other = Agent(ns, "other")

    def create(who, name):
        return call(gateway, who.token, "create_session", {"namespace": str(ns), "name": name, "image": NEVER_STARTS})

    for i in range(cap):
        s = ok(create(agent, f"s{i}"))
        assert s["name"] == f"s{i}" and s["ready"] is False and s["requested_by"] == agent.username, s
    text = refused(create(agent, "s3"))
    assert str(cap) in text and "session" in text.lower(), f"the refusal does not explain the cap: {text}"
    assert sessions_in(kube, ns) == ["s0", "s1", "s2"], "the refused session was created"
    # Another user is not held by this one's cap.
    ok(create(other, "o0"))

    # Suspended: it no longer counts.
    s = ok(call(gateway, agent.token, "suspend_session", {"name": "s0", "namespace": str(ns)}))
    assert s["suspended"] is True, s
    assert get_session(kube, ns, "s0")["spec"]["suspend"] is True
    ok(create(agent, "s3"))
    refused(create(agent, "s4"), str(cap))
    # Deleted: it frees its slot; resumed: it counts again.
    d = ok(call(gateway, agent.token, "delete_session", {"name": "s3", "namespace": str(ns), "wait_s": 60}, timeout=90))
    assert d["deleted"] is True and d["gone"] is True, d
    s = ok(call(gateway, agent.token, "resume_session", {"name": "s0", "namespace": str(ns)}))
    assert s["suspended"] is False, s
    assert get_session(kube, ns, "s0")["spec"]["suspend"] is False
    refused(create(agent, "s5"), str(cap))
    listed = ok(call(gateway, agent.token, "list_sessions", {"namespace": str(ns)}))["sessions"]
    assert sorted(s["name"] for s in listed) == ["o0", "s0", "s1", "s2"], listed
    assert {s["name"]: s["requested_by"] for s in listed} == {
        "o0": other.username, "s0": agent.username, "s1": agent.username, "s2": agent.username}
    assert sessions_in(kube, ns) == ["o0", "s0", "s1", "s2"]


def test_concurrent_creates_do_not_pass_the_cap_together(ns, gateway, kube):
    """Twice the cap of create_session calls from one user at the same time,
    each on its own connection: exactly the cap's worth are created."""
    cap = GATEWAY_MAX_SESSIONS_PER_USER
    agent = Agent(ns, "racer")
    results: dict[str, object] = {}

    async def one(name):
        async with mcp_at(gateway.url + "/mcp", agent.token) as session:
            results[name] = await session.call_tool(
                "create_session", {"namespace": str(ns), "name": name, "image": NEVER_STARTS})

    async def main():
        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                for i in range(2 * cap):
                    tg.start_soon(one, f"r{i}")
    anyio.run(main)
    made = sorted(n for n, r in results.items() if not r.is_error)
    for n, r in results.items():
        if r.is_error:
            refused(r, str(cap))
    assert len(results) == 2 * cap and len(made) == cap, {n: texts(r) for n, r in results.items()}
    assert sessions_in(kube, ns) == made


def test_two_gateway_replicas_behind_one_address_create_exactly_the_cap(ns, gateway, kube, cluster):
    """Two gateway replicas behind one address (client-IP affinity, as a
    Service spreads clients): 20 create_session calls of one user at once,
    each from its own loopback address, spread over both replicas, against a
    cap of 3: exactly 3 are created. The count is held by the apiserver (a
    ledger Lease written under its resourceVersion), not by either
    replica's memory."""
    cap = GATEWAY_MAX_SESSIONS_PER_USER
    calls = 20
    agent = Agent(ns, "pair")
    second = gateway.replica(cluster.state / "gateway-2.log").start()
    results: dict[str, object] = {}

    async def one(i: int, url: str):
        headers = {"Authorization": f"Bearer {agent.token}"}
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{10 + i}")
        async with httpx.AsyncClient(headers=headers, transport=transport, follow_redirects=True,
                                     timeout=httpx.Timeout(60, read=300)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    results[f"p{i}"] = await session.call_tool(
                        "create_session", {"namespace": str(ns), "name": f"p{i}", "image": NEVER_STARTS})

    try:
        with AffinityProxy([("127.0.0.1", gateway.port), ("127.0.0.1", second.port)]) as proxy:
            async def main():
                with anyio.fail_after(180):
                    async with anyio.create_task_group() as tg:
                        for i in range(calls):
                            tg.start_soon(one, i, proxy.url + "/mcp")
            anyio.run(main)
            spread = [list(proxy.assigned.values()).count(b) for b in (0, 1)]
    finally:
        second.stop()
    assert spread == [calls // 2, calls // 2], f"the calls were not spread over both replicas: {spread}"
    made = sorted(n for n, r in results.items() if not r.is_error)
    for n, r in results.items():
        if r.is_error:
            refused(r, str(cap))
    assert len(results) == calls and len(made) == cap, {n: texts(r) for n, r in results.items()}
    assert sessions_in(kube, ns) == made
    # The ledgers hold no place of this user once the creates are done.
    ledgers = [lease for lease in kube.list(path("Lease", OPERATOR_NS))
               if lease["metadata"]["name"].startswith(f"{GATEWAY_FULLNAME}-cap-")]
    assert ledgers, "no cap ledger was written"
    places = [r for lease in ledgers
              for r in json.loads(lease["metadata"].get("annotations", {}).get("notebook.dev/cap-reservations", "[]"))
              if r["user"] == agent.username]
    assert places == [], places


# -- what the gateway costs -------------------------------------------------------------------------
def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def test_gateway_overhead_on_execute(ns, gateway, kube, capsys):
    """execute of 1+1 through the gateway's MCP and straight to the
    sidecar's own MCP, interleaved; prints the latencies (asserts sanity only)."""
    agent = Agent(ns, "agent")
    kube.create(path("NotebookSession", ns), session_obj(ns, "bench"))
    wait_ready(kube, ns, "bench")
    direct = SidecarApi(kube, ns, "bench")
    port = direct.url.rsplit(":", 1)[1]
    n, warm = 100, 10
    args = {"code": "1+1"}

    async def main():
        times = {"gateway": [], "direct": []}
        with anyio.fail_after(600):
            # The sidecar's MCP checks Host (DNS rebinding): address it by its
            # Service name, as an agent in the cluster would.
            async with mcp_at(gateway.url + "/mcp", agent.token) as gw, \
                    mcp_at(direct.url + "/mcp", direct.token, {"Host": f"bench.{ns}.svc:{port}"}) as sc:
                for i in range(warm + n):
                    order = (("gateway", gw, {"session": "bench", "namespace": str(ns), **args}),
                             ("direct", sc, args))
                    for label, session, a in (order if i % 2 == 0 else order[::-1]):
                        t0 = time.perf_counter()
                        r = await session.call_tool("execute", a)
                        dt = time.perf_counter() - t0
                        assert not r.is_error and "2" in texts(r)[1:], (label, texts(r))
                        if i >= warm:
                            times[label].append(dt)
        return times

    times = anyio.run(main)
    g, d = times["gateway"], times["direct"]
    assert len(g) == len(d) == n
    gp50, gp99, dp50, dp99 = (percentile(g, 50), percentile(g, 99), percentile(d, 50), percentile(d, 99))
    with capsys.disabled():  # the figures belong in the CI log
        print(f"\n[gateway bench] execute 1+1, n={n} each, interleaved: gateway p50={gp50 * 1000:.1f}ms "
              f"p99={gp99 * 1000:.1f}ms | direct p50={dp50 * 1000:.1f}ms p99={dp99 * 1000:.1f}ms | "
              f"ratio p50={gp50 / dp50:.2f} p99={gp99 / dp99:.2f} | mean gateway={statistics.mean(g) * 1000:.1f}ms "
              f"direct={statistics.mean(d) * 1000:.1f}ms")
    assert 0 < dp50 <= dp99 < 30 and 0 < gp50 <= gp99 < 30


# -- Host and Origin (DNS rebinding, cross-origin browsers) ----------------------------------------
def test_foreign_hosts_and_origins_are_refused_on_every_route_and_the_charts_are_taken(ns, gateway, kube):
    """A request with an Origin the gateway does not allow, or a Host it does
    not serve, is 403 with a JSON error on /mcp, on the HTTP relay and on the
    WebSocket route, before its token is looked at. The names the chart
    configured (its Service's DNS names, the Ingress host, the listed origin),
    loopback and requests with no Origin pass."""
    agent = Agent(ns, "agent")
    kube.create(path("NotebookSession", ns), session_obj(ns, "web"))
    wait_ready(kube, ns, "web")
    auth = {"Authorization": f"Bearer {agent.token}"}
    base = f"/sessions/{ns}/web"

    def mcp(headers, route="/mcp", token=True):
        return requests.post(gateway.url + route, json=INITIALIZE,
                             headers={**MCP_HEADERS, **(auth if token else {}), **headers}, timeout=30)

    def status(headers, token=True):
        return requests.get(gateway.url + base + "/v1/status", headers={**(auth if token else {}), **headers},
                            timeout=30)

    def ws(headers):
        kw = {"host": headers["Host"]} if "Host" in headers else {}
        kw.update({"origin": headers["Origin"]} if "Origin" in headers else {"suppress_origin": True})
        return websocket.create_connection(f"ws://127.0.0.1:{gateway.port}{base}/v1/events/ws?since=0",
                                           header=[f"Authorization: Bearer {agent.token}"], timeout=30, **kw)

    foreign = [
        {"Origin": "https://evil.example.com"},
        {"Origin": "null"},
        {"Origin": f"https://{GATEWAY_INGRESS_HOST}.evil.example.com"},
        {"Origin": GATEWAY_ALLOWED_ORIGIN + ":8443"},
        {"Host": "evil.example.com"},
        {"Host": "evil.example.com", "Origin": "http://evil.example.com"},  # the conformance suite's rebinding
        {"Host": f"{GATEWAY_INGRESS_HOST}.evil.example.com"},
    ]
    for h in foreign:
        for what, r in (("/mcp", mcp(h)), ("status", status(h)), ("status, no token", status(h, token=False)),
                        ("session mcp", mcp(h, base + "/mcp"))):
            assert r.status_code == 403, (h, what, r.status_code, r.text[:300])
            assert r.headers["content-type"].startswith("application/json"), (h, what, r.headers)
            err = r.json()["error"]
            assert ("Origin" in err if "Origin" in h and "Host" not in h else "Host" in err), (h, what, err)
        with pytest.raises(websocket.WebSocketBadStatusException) as refused_ws:
            ws(h)
        assert refused_ws.value.status_code == 403, (h, refused_ws.value)

    svc = f"{GATEWAY_FULLNAME}.{OPERATOR_NS}.svc.cluster.local"
    allowed = [
        {},
        {"Origin": GATEWAY_ALLOWED_ORIGIN},
        {"Host": GATEWAY_INGRESS_HOST, "Origin": GATEWAY_ALLOWED_ORIGIN},
        {"Host": GATEWAY_INGRESS_HOST, "Origin": f"https://{GATEWAY_INGRESS_HOST}"},
        {"Host": f"{svc}:80", "Origin": f"http://{svc}"},
        {"Host": f"{GATEWAY_FULLNAME}.{OPERATOR_NS}"},
        {"Host": f"localhost:{gateway.port}", "Origin": "http://localhost:6274"},
    ]
    for h in allowed:
        r = mcp(h)
        assert r.status_code == 200 and r.headers.get("mcp-session-id"), (h, r.status_code, r.text[:300])
        r = status(h)
        assert r.status_code == 200 and "queue" in r.json(), (h, r.status_code, r.text[:300])
        # The session's own MCP through the relay: the sidecar does not see
        # the browser's Origin (the gateway checked it), so it does not refuse it.
        r = mcp(h, base + "/mcp")
        assert r.status_code == 200, (h, r.status_code, r.text[:300])
        conn = ws(h)
        try:
            assert conn.connected, h
        finally:
            conn.close()


CONFORMANCE_EXPECTED = ROOT / "tests" / "cluster" / "conformance-expected-failures-gateway.yml"


@pytest.fixture(scope="module")
def conformance_dir():
    sys.path.insert(0, str(ROOT / "tests" / "mcp"))
    import conformance
    return conformance.install()


def test_the_conformance_suite_against_the_gateway(ns, gateway, conformance_dir, tmp_path):
    """The official MCP conformance suite against the gateway's /mcp, as tier 3
    runs it against the sidecar: through a loopback proxy that adds a bearer
    token (here a ServiceAccount's, reviewed by the apiserver), with an exact
    list of expected failures (an unlisted failure, or a listed scenario that
    passes, fails the suite)."""
    import conformance
    agent = Agent(ns, "conformance")
    summary = conformance.run_suite(conformance_dir, gateway.port, agent.token, CONFORMANCE_EXPECTED,
                                    tmp_path / "results")
    print(f"\n[gateway conformance]\n{summary}")


def test_malformed_mcp_bodies_get_json_rpc_errors_from_the_gateway(ns, gateway):
    """The gateway's /mcp answers bodies that are not one MCP message as the
    sidecar's does (the same middleware, tier 3 has every case): JSON-RPC
    errors as application/json, not a plain-text 415."""
    agent = Agent(ns, "agent")
    h = {**MCP_HEADERS, "Authorization": f"Bearer {agent.token}"}
    for body, status, code in ((b"not json", 400, -32700),
                               (json.dumps([INITIALIZE]).encode(), 400, -32600),
                               (json.dumps({"id": 3, "method": "ping"}).encode(), 400, -32600),
                               (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * (9 << 20) + b'"}}',
                                413, -32600)):
        r = requests.post(gateway.url + "/mcp", data=body, headers=h, timeout=60)
        assert r.status_code == status, (body[:40], r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/json"), r.headers
        assert r.json()["error"]["code"] == code, r.text[:300]
    r = requests.post(gateway.url + "/mcp", data=b"not json", headers=MCP_HEADERS, timeout=30)
    assert r.status_code == 401, "the token is checked before the body"
