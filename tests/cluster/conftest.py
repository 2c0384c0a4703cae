"""Tier 4: the operator against a real control plane.

One control plane per test session (tests/cluster/up, down at the end; the
logs are printed when anything failed), the CRDs applied once, the operator
started once as the real binary with the token of a ServiceAccount bound
with exactly the RBAC the Helm chart renders, and the stand-in kubelet
(kubelet.py) running kernel pods; the gateway, when a test asks for it, with
the chart's gateway RBAC the same way. Each test gets a fresh namespace; when it
fails, what the namespace holds, the kubelet's and the operator's lines about
it and the sidecar and kernel logs are printed.

Nothing here skips: a missing tool or binary fails the tier.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import requests
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from harness import BIN, free_port  # noqa: E402
from kube import Kube, path, namespace_for_test  # noqa: E402
from kubelet import SIDECAR_PORT_DEFAULT, StandInKubelet  # noqa: E402

OPERATOR_NS = "nbo-system"
RELEASE = "nbo"
# The chart's names for this release: the operator's objects and the gateway's.
FULLNAME = f"{RELEASE}-notebook-operator"
GATEWAY_FULLNAME = f"{FULLNAME}-gateway"
# The per-user cap the gateway runs with here (the chart's default is 10).
GATEWAY_MAX_SESSIONS_PER_USER = 3
# The chart's Host and Origin values the gateway fixture is rendered with: an
# Ingress host (an allowed Host through the chart) and one browser origin.
GATEWAY_INGRESS_HOST = "notebooks.example.test"
GATEWAY_ALLOWED_ORIGIN = "https://agents.example.test"
# The fallback read of a Ready sidecar's status, set out of reach of every
# test: a count that moves in a test moved through the sidecar's long poll.
STATUS_INTERVAL = os.environ.get("NBO_TEST_STATUS_INTERVAL", "10m")
NODE = "nbo-node"


def run(cmd, timeout=120, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r.stdout


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


# -- the control plane ------------------------------------------------------------
class Cluster:
    def __init__(self, state: pathlib.Path, kubeconfig: pathlib.Path, bindir: pathlib.Path):
        self.state = state
        self.kubeconfig = kubeconfig
        self.bindir = bindir
        self.env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines() if "=" in line)

    def kubectl(self, *args, timeout=120, input=None) -> str:
        return run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], timeout=timeout, input=input)

    def log_tails(self, lines=40) -> str:
        out = []
        for f in sorted((self.state / "logs").glob("*.log")):
            text = f.read_text(errors="replace").splitlines()
            out.append(f"==> {f} <==\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


@pytest.fixture(scope="session")
def k8s_bin() -> pathlib.Path:
    """kube-apiserver, kubectl, helm... on PATH, built by tests/cluster/install
    on a fresh machine (about 17 min), found in the cache otherwise (0.2 s)."""
    bindir = pathlib.Path(run([str(HERE / "install")], timeout=3600).strip().splitlines()[-1])
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    for tool in ("kubectl", "helm", "kube-apiserver", "etcd", "kwok"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not in {bindir} after tests/cluster/install", pytrace=False)
    return bindir


@pytest.fixture(scope="session")
def cluster(request, k8s_bin):
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run cargo build first", pytrace=False)
    t0 = time.monotonic()
    bindir = k8s_bin
    reuse = os.environ.get("NBO_TIER4_REUSE")
    if reuse:
        # For working on the tests: a control plane left running by
        # `tests/cluster/up DIR`, used as it is and left running.
        state = pathlib.Path(reuse).resolve()
        yield Cluster(state, state / "admin.kubeconfig", bindir)
        return
    state = pathlib.Path(tempfile.mkdtemp(prefix="nbo-tier4-"))
    env = {**os.environ, "NBO_K8S_BIN": str(bindir)}
    try:
        kubeconfig = pathlib.Path(run([str(HERE / "up"), str(state)], timeout=600, env=env).strip())
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"tests/cluster/up failed; state in {state}\n{e}", pytrace=False)
    c = Cluster(state, kubeconfig, bindir)
    print(f"\n[tier4] control plane up in {time.monotonic() - t0:.1f}s, state {state}", file=sys.stderr)
    yield c
    failed = request.session.testsfailed
    if failed:
        print(f"\n[tier4] {failed} test(s) failed; control plane logs (all in {state}/logs):\n"
              + c.log_tails(), file=sys.stderr)
    run([str(HERE / "down"), str(state)], timeout=180)
    if not failed and not os.environ.get("NBO_KEEP_STATE"):
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def kube(cluster) -> Kube:
    return Kube.from_kubeconfig(cluster.kubeconfig, cluster.state / "client-admin")


@pytest.fixture(scope="session")
def crds(cluster, kube):
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    for name in ("notebooksessions.notebook.dev", "assetleases.notebook.dev", "notebookpools.notebook.dev"):
        kube.wait_for("CustomResourceDefinition", None, name, lambda o: o and any(
            c["type"] == "Established" and c["status"] == "True" for c in o.get("status", {}).get("conditions") or []),
            timeout=60, what=f"CRD {name} Established")


# -- the operator, with the chart's RBAC ------------------------------------------------
def render_chart(release: str, namespace: str, *sets: str) -> list[dict]:
    args = ["helm", "template", release, str(ROOT / "charts" / "notebook-operator"), "--namespace", namespace,
            "--kube-version", "1.37.2"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(run(args)) if d]


def is_gateway(doc: dict) -> bool:
    """An object of the chart's gateway (its own component label)."""
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"


def rendered(docs: list[dict], kind: str, name: str) -> dict:
    """The one rendered object of that kind and name."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"the chart renders {len(found)} {kind} named {name}: " \
                            f"{[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


def service_account_kubeconfig(cluster, sa: str, user: str) -> tuple[str, Kube, pathlib.Path]:
    """A token of ServiceAccount OPERATOR_NS/sa (kubectl create token), a
    client with it, and a kubeconfig holding only that token."""
    token = cluster.kubectl("-n", OPERATOR_NS, "create", "token", sa, "--duration=6h").strip()
    kc = cluster.state / f"{user}.kubeconfig"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": "nbo", "cluster": {"server": cluster.env["NBO_APISERVER"],
                                                "certificate-authority": cluster.env["NBO_CA"]}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "nbo", "user": user}}],
    }))
    kc.chmod(0o600)
    as_sa = Kube(cluster.env["NBO_APISERVER"], cluster.env["NBO_CA"], token=token)
    who = as_sa.create("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{OPERATOR_NS}:{sa}", who
    return token, as_sa, kc


class LoggedProcess:
    """A process of the binary logging to `log_path`, run as `proc`."""
    proc: subprocess.Popen | None
    log_path: pathlib.Path

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30):
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


class Operator(LoggedProcess):
    """One replica of the operator binary, as the chart's Deployment runs it:
    its arguments and environment, a kubeconfig with the ServiceAccount token,
    a loopback metrics address. Can be stopped and started again."""

    def __init__(self, kube_admin: Kube, as_operator: Kube, kubeconfig: pathlib.Path, args: list[str],
                 env: dict, identity: str, log: pathlib.Path, service_account: str):
        self.admin = kube_admin
        self.kube = as_operator  # the operator's own identity, for can-i checks
        self.kubeconfig = kubeconfig
        self.identity = identity
        self.service_account = service_account
        self.log_path = log
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}"
        self.args = [a for a in args if not a.startswith("--metrics-listen")] + [f"--metrics-listen=127.0.0.1:{port}"]
        self.env = {**env, "KUBECONFIG": str(kubeconfig), "POD_NAME": identity}
        self.lease = next(a.split("=", 1)[1] for a in args if a.startswith("--leader-election-lease="))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Operator":
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} {self.identity}\n".encode())
            self.proc = subprocess.Popen([str(BIN), *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self

    def holder(self) -> str | None:
        lease = self.admin.get_opt(path("Lease", OPERATOR_NS, self.lease))
        return (lease or {}).get("spec", {}).get("holderIdentity")

    def wait_leader(self, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while self.holder() != self.identity:
            assert self.alive(), f"the operator exited with {self.proc.returncode}:\n{self.log()[-5000:]}"
            assert time.monotonic() < deadline, f"{self.identity} never took the leader Lease:\n{self.log()[-5000:]}"
            time.sleep(0.2)

    def metrics(self) -> str:
        return requests.get(self.metrics_url + "/metrics", timeout=5).text

    def wait_reconciled(self, session: str, offset: int, timeout: float = 30):
        """Waits until the log after `offset` shows a finished reconcile of
        `session`: the positive witness before a check that nothing changed."""
        pattern = re.compile(rf"reconciled session={re.escape(session)}\b")
        deadline = time.monotonic() + timeout
        while not pattern.search(re.sub(r"\x1b\[[0-9;]*m", "", self.log_since(offset))):
            assert time.monotonic() < deadline, f"no reconcile of {session} within {timeout}s"
            time.sleep(0.05)


@pytest.fixture(scope="session")
def operator_factory(cluster, kube, crds):
    """Makes replicas of the operator binary with a kubeconfig holding only the
    token of the chart's ServiceAccount, bound by the chart's own ClusterRoles,
    Roles and bindings (rendered by helm template, applied as they are)."""
    docs = render_chart(RELEASE, OPERATOR_NS, f"statusInterval={STATUS_INTERVAL}")
    rbac_kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    # The chart renders the gateway's ServiceAccount and RBAC too: those are
    # the gateway fixture's, not the operator's.
    rbac = [d for d in docs if d["kind"] in rbac_kinds and not is_gateway(d)]
    kinds = sorted({d["kind"] for d in rbac})
    assert kinds == sorted(rbac_kinds), f"the chart renders RBAC kinds {kinds}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}})
    for d in rbac:
        kube.apply(d)
    sa = rendered(docs, "ServiceAccount", FULLNAME)["metadata"]["name"]
    deployment = rendered(docs, "Deployment", FULLNAME)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    token, as_operator, kc = service_account_kubeconfig(cluster, sa, "operator")

    # The chart's environment (POD_NAME comes from the downward API there).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "NOTEBOOK_", "POD_"))}
    env.update({"POD_NAMESPACE": OPERATOR_NS,
                "RUST_LOG": os.environ.get("NBO_OPERATOR_LOG", "info,notebook_operator=debug")})
    for e in container["env"]:
        if "value" in e and e["name"] != "RUST_LOG":
            env[e["name"]] = e["value"]
    made: list[Operator] = []

    def make(identity: str, *, kubeconfig: pathlib.Path | None = None, args: list[str] | None = None) -> Operator:
        """A replica; `kubeconfig` (e.g. the admin's, as a developer runs it)
        and `args` (the chart's by default) replace the chart's."""
        op = Operator(kube, as_operator, kubeconfig or kc, container["args"] if args is None else args, env,
                      identity, cluster.state / f"{identity}.log", sa)
        made.append(op)
        return op

    make.args = list(container["args"])
    yield make
    for op in made:
        op.stop()


@pytest.fixture(scope="session")
def operator(operator_factory):
    """The operator every test runs against (the Lease holder)."""
    op = operator_factory("tier4-operator").start()
    op.wait_leader()
    yield op


def without_flags(args: list[str], *flags: str) -> list[str]:
    """args without the given flags and their values (`--f v` or `--f=v`)."""
    out, it = [], iter(args)
    for a in it:
        if a.split("=", 1)[0] in flags:
            if "=" not in a:
                next(it, None)
            continue
        out.append(a)
    return out


# -- the gateway, with the chart's RBAC ---------------------------------------------------
_running_gateways: list["Gateway"] = []


class Gateway(LoggedProcess):
    """`notebook-operator gateway` as the chart's Deployment runs it, on a
    loopback port, with a kubeconfig holding only its ServiceAccount's token."""

    def __init__(self, kube_admin: Kube, as_gateway: Kube, kubeconfig: pathlib.Path, args: list[str], env: dict,
                 log: pathlib.Path, service_account: str):
        self.admin = kube_admin
        self.kube = as_gateway
        self.kubeconfig = kubeconfig
        self.service_account = service_account
        self.username = f"system:serviceaccount:{OPERATOR_NS}:{service_account}"
        self.log_path = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.args = args
        self.env = {**env, "KUBECONFIG": str(kubeconfig)}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Gateway":
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} {' '.join(self.args)}\n".encode())
            self.proc = subprocess.Popen([str(BIN), *self.args], stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), f"the gateway exited with {self.proc.returncode}:\n{self.log()[-5000:]}"
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"the gateway's /readyz never answered 200:\n{self.log()[-5000:]}"
            time.sleep(0.1)

    def metrics(self) -> str:
        return requests.get(self.metrics_url + "/metrics", timeout=5).text

    def replica(self, log: pathlib.Path) -> "Gateway":
        """Another replica of this gateway (same identity, arguments and
        environment) on ports of its own, not started."""
        env = {k: v for k, v in self.env.items() if k != "KUBECONFIG"}
        g = Gateway(self.admin, self.kube, self.kubeconfig, [], env, log, self.service_account)
        g.args = without_flags(self.args, "--listen", "--metrics-listen") + [
            "--listen", f"127.0.0.1:{g.port}", "--metrics-listen", f"127.0.0.1:{g.metrics_port}"]
        return g

    def own_refusals(self, text: str) -> list[str]:
        """Lines where the apiserver refused the gateway's own identity (the
        chart's RBAC was not enough), not the callers it turned away."""
        return [line for line in text.splitlines() if "forbidden" in line and self.username in line
                and "because it is being terminated" not in line]


@pytest.fixture(scope="session")
def gateway(request, cluster, kube, crds):
    """The gateway binary with exactly the chart's gateway ServiceAccount,
    ClusterRole and binding (rendered by helm template, applied as they are),
    the rendered Deployment's arguments and environment, listening on
    loopback and reaching the stand-in kubelet's sidecars on their port."""
    docs = render_chart(RELEASE, OPERATOR_NS, f"gateway.maxSessionsPerUser={GATEWAY_MAX_SESSIONS_PER_USER}",
                        "gateway.ingress.enabled=true", f"gateway.ingress.host={GATEWAY_INGRESS_HOST}",
                        f"gateway.allowedOrigins={{{GATEWAY_ALLOWED_ORIGIN}}}")
    rbac = [d for d in docs if is_gateway(d) and d["kind"] in
            {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}]
    assert sorted(d["kind"] for d in rbac) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                                "ServiceAccount"], rbac
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}})
    for d in rbac:
        kube.apply(d)
    sa = rendered(docs, "ServiceAccount", GATEWAY_FULLNAME)["metadata"]["name"]
    deployment = rendered(docs, "Deployment", GATEWAY_FULLNAME)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    _, as_gateway, kc = service_account_kubeconfig(cluster, sa, "gateway")
    # The Deployment's arguments, but loopback instead of 0.0.0.0, and the
    # sidecar port the stand-in kubelet's sidecars listen on.
    args = without_flags(container["args"], "--listen", "--sidecar-port", "--metrics-listen")
    assert args[0] == "gateway", container["args"]
    assert "--max-sessions-per-user" in args and str(GATEWAY_MAX_SESSIONS_PER_USER) in args, args
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "NOTEBOOK_", "POD_", "GATEWAY_"))}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    # The downward API's metadata.namespace, as the Deployment sets it.
    assert any(e["name"] == "POD_NAMESPACE" and "fieldRef" in e.get("valueFrom", {})
               for e in container.get("env", [])), container.get("env")
    env["POD_NAMESPACE"] = OPERATOR_NS
    env["RUST_LOG"] = os.environ.get("NBO_GATEWAY_LOG", "info,notebook_operator=debug")
    gw = Gateway(kube, as_gateway, kc, [], env, cluster.state / "gateway.log", sa)
    gw.args = args + ["--listen", f"127.0.0.1:{gw.port}", "--sidecar-port", str(SIDECAR_PORT_DEFAULT),
                      "--metrics-listen", f"127.0.0.1:{gw.metrics_port}"]
    gw.start()
    _running_gateways.append(gw)
    yield gw
    _running_gateways.remove(gw)
    gw.stop()
    if request.session.testsfailed:
        print(f"\n[tier4] gateway log (last 80 lines of {gw.log_path}):\n" + "\n".join(gw.log().splitlines()[-80:]),
              file=sys.stderr)


@pytest.fixture(scope="session")
def kubelet(cluster, kube):
    k = StandInKubelet(Kube.from_kubeconfig(cluster.kubeconfig, cluster.state / "client-kubelet"), NODE,
                       cluster.state / "kubelet", BIN)
    k.start()
    yield k
    k.stop()
    try:
        k.cleanup_volumes()
    except Exception as e:  # noqa: BLE001
        print(f"[tier4] could not delete the stand-in PVs: {e}", file=sys.stderr)


def refusals(log: str) -> list[str]:
    """Lines of an operator log where the apiserver said no (RBAC, or an
    admission plugin checking permissions such as
    OwnerReferencesPermissionEnforcement); creating objects in a namespace
    being deleted is refused too, and expected."""
    return [line for line in log.splitlines() if "forbidden" in line and "because it is being terminated" not in line]


# -- one namespace per test --------------------------------------------------------------
def dump_namespace(kube: Kube, cluster: Cluster, kubelet: StandInKubelet, operator: Operator | None,
                   ns: str) -> str:
    out = [f"===== namespace {ns} =====", *kube.describe(ns, ("NotebookSession", "NotebookPool", "Pod", "Service", "PersistentVolumeClaim"))]
    try:
        out.append("--- Secrets: " + ", ".join(o["metadata"]["name"] for o in kube.list(path("Secret", ns))))
        out.append("--- events\n" + cluster.kubectl("-n", ns, "get", "events", "--sort-by=.lastTimestamp",
                                                     "-o", "wide", timeout=30))
    except Exception as e:  # noqa: BLE001
        out.append(f"--- events: {e}")
    lines = [line for line in kubelet.log_path.read_text(errors="replace").splitlines() if f" {ns}/" in line]
    out.append("--- stand-in kubelet\n" + "\n".join(lines[-150:]))
    for f in sorted((kubelet.root / "pods" / ns).glob("*/*.log")):
        text = f.read_text(errors="replace").splitlines()
        out.append(f"--- {f.relative_to(kubelet.root)} (last 60 lines)\n" + "\n".join(text[-60:]))
    if operator is not None:
        lines = [line for line in operator.log().splitlines() if ns in line]
        out.append("--- operator (lines naming the namespace)\n" + "\n".join(lines[-150:]))
    for gw in _running_gateways:
        lines = [line for line in gw.log().splitlines() if ns in line]
        out.append("--- gateway (lines naming the namespace)\n" + "\n".join(lines[-150:]))
    return "\n".join(out)


class Namespace(str):
    """The namespace name, with what the test needs around it."""
    kube: Kube
    cluster: Cluster
    kubelet: StandInKubelet


def make_namespace(request, kube, cluster, kubelet, operator, labels=None):
    name = namespace_for_test(request.node.name)
    kube.create(path("Namespace"), {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": name, "labels": {"nbo.test/tier4": "true",
                                                                           **(labels or {})}}})
    # The ServiceAccount admission plugin refuses pods until this exists.
    kube.wait_for("ServiceAccount", name, "default", lambda o: o is not None, timeout=60,
                  what=f"serviceaccount {name}/default")
    kubelet.manage(name)
    offset = operator.log_size() if operator else 0
    ns = Namespace(name)
    ns.kube, ns.cluster, ns.kubelet = kube, cluster, kubelet
    ns.operator = operator
    yield ns
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        text = dump_namespace(kube, cluster, kubelet, operator, name)
        dump = cluster.state / "dumps" / f"{name}.txt"
        dump.parent.mkdir(exist_ok=True)
        dump.write_text(text)
        print(f"\n[tier4] dump of {name} (also in {dump}):\n{text[-60000:]}")
    kube.delete(path("Namespace", None, name))
    if operator is not None:
        # The chart's RBAC must be enough: the apiserver never said no, by
        # RBAC or by an admission plugin that checks permissions
        # (OwnerReferencesPermissionEnforcement). Only the refusal to create
        # objects in a namespace being deleted is expected.
        # A test that restarts the apiserver moves the start past its
        # startup, when RBAC refuses everyone until its caches are synced.
        forbidden = refusals(operator.log_since(getattr(ns, "refusals_from", offset)))
        assert not forbidden, "the operator was refused by RBAC:\n" + "\n".join(forbidden[:20])
        assert operator.alive(), f"the operator is not running (exit code {operator.proc.returncode})"


@pytest.fixture
def ns(request, kube, cluster, kubelet, operator):
    yield from make_namespace(request, kube, cluster, kubelet, operator)


@pytest.fixture
def restricted_ns(request, kube, cluster, kubelet, operator):
    """A namespace that enforces the restricted Pod Security Standard."""
    yield from make_namespace(request, kube, cluster, kubelet, operator,
                              {"pod-security.kubernetes.io/enforce": "restricted"})


@pytest.fixture
def bare_ns(request, kube, cluster, kubelet):
    """A fresh namespace without the test operator's checks (packaging tests)."""
    yield from make_namespace(request, kube, cluster, kubelet, None)

