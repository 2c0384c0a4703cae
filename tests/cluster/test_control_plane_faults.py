"""Tier 4, issue 18: the control plane's own faults. The operator killed with
SIGKILL in the middle of 200 creates; the apiserver stopped for 20 s during a
burst, then etcd restarted, with AssetLeases expiring inside the outage. The
processes under test are the operator and the gateway binaries with the
chart's RBAC; the apiserver and etcd are the real ones, stopped and started
again with their own command lines. Recovery times are printed ([faults])."""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import requests

from kube import path
from sessions import SidecarApi, create_session, parse_time, wait_ready, wait_until
from test_assetlease import lease_name, lease_phase, make_png, notebook_referencing, wait_lease, workspace
from test_gateway import Agent, call, ok

NEVER_STARTS = "quay.io/jupyter/does-not-exist:1"
# How long the apiserver stays down.
OUTAGE_S = 20
# The AssetLeases' duration: long enough to set the scene before they expire.
LEASE_S = 30


class Component:
    """A control-plane process of `tests/cluster/up` (pids/NAME.pid, logs/NAME.log),
    stopped and started again with its own command line, environment and
    working directory, as a restart on upgrade does."""

    def __init__(self, cluster, name: str):
        self.cluster, self.name = cluster, name
        self.pid_file = cluster.state / "pids" / f"{name}.pid"
        self.pid = int(self.pid_file.read_text())
        proc = pathlib.Path(f"/proc/{self.pid}")
        self.cmd = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        self.env = dict(kv.split(b"=", 1) for kv in proc.joinpath("environ").read_bytes().split(b"\0") if b"=" in kv)
        self.cwd = os.readlink(proc / "cwd")
        self.proc: subprocess.Popen | None = None

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            state = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10):
        """Sends `sig`; SIGKILL when it still runs after `timeout` seconds."""
        os.kill(self.pid, sig)
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + 30
            time.sleep(0.05)

    def start(self):
        with open(self.cluster.state / "logs" / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.pid_file.write_text(f"{self.pid}\n")


def answers(url: str) -> int | None:
    try:
        return requests.get(url, timeout=3).status_code
    except requests.RequestException:
        return None


def apiserver_ready(cluster) -> bool:
    try:
        return cluster.kubectl("get", "--raw", "/readyz", timeout=5).strip() == "ok"
    except Exception:  # noqa: BLE001 - down is an answer here
        return False


def leader_gauge(op) -> float | None:
    try:
        found = re.search(r"^notebook_operator_leader (\S+)$", op.metrics(), re.M)
    except requests.RequestException:
        return None
    return float(found.group(1)) if found else None


def test_the_operator_killed_while_200_sessions_are_created_leaves_one_of_each_and_rewrites_no_secret(
        ns, operator, capsys):
    """SIGKILL of the operator while 200 sessions are being created, then
    the same replica started again (a container restart keeps the pod's
    name, so its identity): every session gets exactly one pod, Service and
    Secret, nothing is left that no session owns, and no Secret is written
    twice (a watch on Secrets from before the burst sees one ADDED each and
    nothing else). The pods are not run (the node is full), which keeps the
    test about the control plane."""
    kube, n = ns.kube, 200
    ns.kubelet.unmanage(str(ns))
    names = [f"s{i:03d}" for i in range(n)]
    events: list[tuple[str, str, str]] = []
    stop = threading.Event()
    rv = kube.get(path("Secret", ns))["metadata"]["resourceVersion"]

    def watch_secrets():
        nonlocal rv
        while not stop.is_set():
            try:
                for typ, o in kube.watch(path("Secret", ns), rv, timeout=20, stop=stop):
                    rv = o["metadata"]["resourceVersion"]
                    if typ != "BOOKMARK":
                        events.append((typ, o["metadata"]["name"], o["metadata"]["uid"]))
            except Exception:  # noqa: BLE001 - watch again from the last version
                stop.wait(0.2)

    watcher = threading.Thread(target=watch_secrets, daemon=True)
    watcher.start()
    errors: list[str] = []

    def create(chunk):
        for name in chunk:
            try:
                create_session(kube, ns, name, kernel={"image": NEVER_STARTS})
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"{name}: {e}")

    workers = [threading.Thread(target=create, args=(names[i::8],)) for i in range(8)]
    try:
        for w in workers:
            w.start()
        secrets = lambda: [s for s in kube.list(path("Secret", ns)) if s["metadata"]["name"].endswith("-token")]  # noqa: E731
        # The witness that the operator was in the middle of the burst.
        wait_until(lambda: len(secrets()) >= 30, timeout=120, step=0.05, what="30 Secrets made before the kill")
        operator.proc.kill()
        operator.proc.wait(timeout=10)
        killed = time.monotonic()
        at_kill = len(secrets())
        for w in workers:
            w.join(timeout=180)
        assert not errors, errors[:5]
        operator.start()
        wait_until(lambda: leader_gauge(operator) == 1, timeout=60, step=0.1, what="the restarted operator leads")
        leading = time.monotonic() - killed

        def complete():
            pods = kube.list(path("Pod", ns))
            services = kube.list(path("Service", ns))
            return len(pods) >= n and len(services) >= n and len(secrets()) >= n
        wait_until(complete, timeout=300, step=0.5, what=f"{n} pods, Services and Secrets")
        recovered = time.monotonic() - killed
        # Let the watch see everything the operator wrote up to now.
        last = kube.get(path("Secret", ns))["metadata"]["resourceVersion"]
        wait_until(lambda: int(rv) >= int(last), timeout=30, step=0.05, what="the Secret watch caught up")
    finally:
        stop.set()
    with capsys.disabled():  # the recovery times belong in the CI log
        print(f"\n[faults] operator SIGKILL with {at_kill}/{n} Secrets made: leading again after {leading:.1f} s, "
              f"every pod, Service and Secret after {recovered:.1f} s")
    assert at_kill < n, "the burst was done before the kill: nothing was left for the restarted operator"

    sessions = {s["metadata"]["name"]: s["metadata"]["uid"] for s in kube.list(path("NotebookSession", ns))}
    assert sorted(sessions) == names

    def owner(obj) -> str | None:
        refs = [r for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")]
        assert len(refs) == 1 and refs[0]["kind"] == "NotebookSession", obj["metadata"]
        assert sessions.get(refs[0]["name"]) == refs[0]["uid"], f"an orphan: {obj['metadata']}"
        return refs[0]["name"]

    pods = kube.list(path("Pod", ns))
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"{s}-kernel" for s in names)
    assert sorted(owner(p) for p in pods) == names
    services = kube.list(path("Service", ns))
    assert sorted(owner(s) for s in services) == names, "one Service per session"
    all_secrets = kube.list(path("Secret", ns))
    assert sorted(s["metadata"]["name"] for s in all_secrets) == sorted(f"{s}-token" for s in names)
    assert sorted(owner(s) for s in all_secrets) == names
    uids = {s["metadata"]["name"]: s["metadata"]["uid"] for s in all_secrets}
    rewrites = [e for e in events if e[0] != "ADDED"]
    assert not rewrites, f"Secrets written after their creation: {rewrites[:10]}"
    added = sorted(e[1] for e in events)
    assert added == sorted(uids), "each Secret was created exactly once"
    assert all(uids[name] == uid for _, name, uid in events)


def test_an_apiserver_outage_and_an_etcd_restart_are_survived_and_leases_are_decided_after_not_early(
        ns, operator, gateway, cluster, capsys):
    """The apiserver stopped for 20 s in the middle of a burst of creates,
    then started again; then etcd restarted once. The operator and the
    gateway keep running (the same processes), say they are not ready while
    the apiserver is away (the positive witness that they noticed) and ready
    again after; every session of the burst becomes Ready; the two
    AssetLeases that expired inside the outage are decided (Retained, the
    one a notebook references; Reclaimed, the other), neither before its
    expiresAt."""
    kube = ns.kube
    apiserver, etcd = Component(cluster, "kube-apiserver"), Component(cluster, "etcd")
    op_pid, gw_pid = operator.proc.pid, gateway.proc.pid
    agent = Agent(ns, "faults")

    # Two assets whose leases will expire inside the outage.
    create_session(kube, ns, "plots", assets={"leaseDuration": f"{LEASE_S}s"})
    wait_ready(kube, ns, "plots")
    api, ws = SidecarApi(kube, ns, "plots"), workspace(ns, "plots")
    kept, dropped = make_png(api), make_png(api)
    (ws / "kept.ipynb").write_text(json.dumps(notebook_referencing(f"assets/{kept}")))
    leases = {a: wait_lease(kube, ns, lease_name("plots", a), lambda o: o and (o.get("status") or {}).get("expiresAt"),
                            30, "with expiresAt") for a in (kept, dropped)}
    expires = {a: parse_time(lease["status"]["expiresAt"]) for a, lease in leases.items()}
    gone: dict[str, float] = {}
    watching = threading.Event()

    def watch_dropped():
        file = ws / "assets" / dropped
        deadline = time.monotonic() + 300
        while not watching.is_set() and time.monotonic() < deadline:
            if not file.exists():
                gone["at"] = time.time()
                return
            time.sleep(0.02)

    threading.Thread(target=watch_dropped, daemon=True).start()

    # The burst: one create every 0.3 s; a create refused while the
    # apiserver is away is tried again, as a client would.
    burst = [f"burst-{i}" for i in range(6)]
    made: list[str] = []

    def create_burst():
        for name in burst:
            deadline = time.monotonic() + 180
            while True:
                try:
                    create_session(kube, ns, name)
                    made.append(name)
                    break
                except Exception:  # noqa: BLE001 - the outage
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.5)
            time.sleep(0.3)

    # The outage starts 8 s before the first expiry, so both fall inside it.
    first = min(expires.values())
    assert time.time() < first - 9, f"the scene took too long: {first - time.time():.1f} s left before expiry"
    time.sleep(first - 8 - time.time())
    creator = threading.Thread(target=create_burst, daemon=True)
    creator.start()
    wait_until(lambda: len(made) >= 2, timeout=30, step=0.05, what="the burst started")
    # Stopped at once (a lost control-plane node; its graceful shutdown
    # drains requests for up to a minute), started again whatever happens.
    apiserver.stop(signal.SIGKILL)
    down = time.time()
    try:
        # The witness: both noticed (not ready), and both still run.
        wait_until(lambda: answers(operator.metrics_url + "/readyz") == 503, timeout=15, step=0.2,
                   what="the operator says it is not ready")
        wait_until(lambda: answers(gateway.url + "/readyz") == 503, timeout=15, step=0.2,
                   what="the gateway says it is not ready")
        time.sleep(max(0.0, down + OUTAGE_S - time.time()))
        assert all(down < e < time.time() for e in expires.values()), (down, expires)
    finally:
        apiserver.start()
        wait_until(lambda: apiserver_ready(cluster), timeout=120, step=0.2, what="the apiserver is back")
    back = time.time()
    op_ready = wait_until(lambda: answers(operator.metrics_url + "/readyz") == 200, timeout=60, step=0.1,
                          what="the operator ready again") - back
    gw_ready = wait_until(lambda: answers(gateway.url + "/readyz") == 200, timeout=60, step=0.1,
                          what="the gateway ready again") - back

    # etcd restarted once.
    try:
        etcd.stop()
    finally:
        etcd.start()
    etcd_url = f"{cluster.env['NBO_ETCD']}/health"
    wait_until(lambda: answers(etcd_url) == 200, timeout=60, step=0.1, what="etcd healthy again")
    etcd_back = time.time()
    wait_until(lambda: apiserver_ready(cluster), timeout=120, step=0.2, what="the apiserver ready on the new etcd")
    after_etcd = time.time() - etcd_back
    # A starting apiserver refuses every request by RBAC until its caches
    # are synced: those refusals are the restart's, not missing rights.
    # From here on, none is expected.
    ns.refusals_from = operator.log_size()

    creator.join(timeout=180)
    assert sorted(made) == sorted(burst), f"creates lost: {sorted(set(burst) - set(made))}"
    for name in burst:
        wait_ready(kube, ns, name, timeout=300)
    all_ready = time.time() - back

    # The leases: decided after the outage, neither before its expiry.
    retained = wait_lease(kube, ns, lease_name("plots", kept), lambda o: lease_phase(o) == "Retained", 120,
                          "Retained")
    wait_lease(kube, ns, lease_name("plots", dropped), lambda o: lease_phase(o) == "Reclaimed", 120, "Reclaimed")
    watching.set()
    assert gone.get("at", 0) >= expires[dropped], f"deleted {gone.get('at', 0) - expires[dropped]:+.3f} s from expiry"
    assert (ws / "assets" / kept).exists(), "a referenced asset survives"
    assert parse_time(retained["status"]["lastCheckTime"]) >= expires[kept] - 1, retained["status"]

    # The same processes, serving.
    assert operator.alive() and operator.proc.pid == op_pid, "the operator restarted"
    assert gateway.alive() and gateway.proc.pid == gw_pid, "the gateway restarted"
    listed = ok(call(gateway, agent.token, "list_sessions", {"namespace": str(ns)}))["sessions"]
    assert {s["name"] for s in listed} >= set(burst), listed
    assert api.wait_final(api.submit("1 + 1")["id"])["state"] == "completed"
    # The controller manager's garbage collector keeps a graph built from its
    # watches; after the etcd restart it once lacked a session's dependents,
    # so the next file's foreground delete of a session ended at once with
    # its pod still there. The tests after this one get a fresh one, once its
    # monitors have synced (its own log line says so).
    kcm = Component(cluster, "kube-controller-manager")
    kcm_log = cluster.state / "logs" / "kube-controller-manager.log"
    kcm.stop()
    since = kcm_log.stat().st_size
    kcm.start()
    wait_until(lambda: b"all resource monitors have synced" in kcm_log.read_bytes()[since:], timeout=60, step=0.2,
               what="the restarted garbage collector synced")
    with capsys.disabled():
        print(f"\n[faults] apiserver down {OUTAGE_S} s: apiserver back -> operator ready {op_ready:.1f} s, "
              f"gateway ready {gw_ready:.1f} s, all {len(burst)} burst sessions Ready {all_ready:.1f} s; "
              f"etcd restart -> apiserver ready {after_etcd:.1f} s; "
              f"unreferenced asset deleted {gone['at'] - expires[dropped]:+.2f} s from its expiry")
