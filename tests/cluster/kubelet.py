"""A stand-in for the kubelet of node `nbo-node`, for the tier-4 tests.

There is no container runtime at this tier, so this runs what a kernel pod
would run, as host processes, from the pod the operator created:

- the sidecar: this repository's binary with the `sidecar` arguments of the
  pod's native-sidecar init container, every path in them rewritten through
  the container's volume mounts into host directories, listening on a
  127.0.0.0/8 address of its own (the pod IP), the kernel ports on that
  address too (`--kernel-ip`);
- the kernel: the kernel container's command (`python` is the tests' venv
  python, with ipykernel), paths rewritten the same way, once the sidecar's
  startup probe answers, as the kubelet starts main containers after a
  native sidecar has started.

Volumes: an emptyDir is a per-pod directory, a secret volume a per-pod
directory with the Secret's keys as files, a PersistentVolumeClaim the
hostPath directory of the PersistentVolume bound to it. That PV comes from
the stand-in provisioner below (one hostPath PV per claim, so the claim binds
and the scheduler places the pod), and outlives the pod, like a disk.

It writes pod status through the API as a kubelet does (phase, podIP, the
container statuses, the Initialized / ContainersReady / Ready conditions from
the readiness probe), restarts a container process that exits (its
termination message, from the file the sidecar is pointed at, in
lastState.terminated.message), and on a pod's
deletionTimestamp stops the kernel, then the sidecar (SIGTERM, SIGKILL after
the grace period) and confirms the deletion with grace 0. A container whose
image names `does-not-exist` is never started: its status says
ImagePullBackOff, as after a failed pull.

Only pods of namespaces handed to `manage()` are run; the deletion of any
pod on the node is confirmed. Every loop is bounded in time; nothing binds
outside 127.0.0.0/8.
"""
from __future__ import annotations

import base64
import fcntl
import datetime
import itertools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import requests

from kube import ApiError, Kube, path

PULL_FAILS = "does-not-exist"
SIDECAR_PORT_DEFAULT = 8888
KERNEL_PORTS = range(5555, 5560)
MAX_POD_LIFE_S = 3600.0
# The pod and claim watches list everything again this often (see watch_loop).
RELIST_S = 60
# How long a pod waits for its volumes' sources (Secret, claim, volume).
VOLUME_WAIT_S = 300.0


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class IpPool:
    """Pod IPs: 127.<A>.<B>.<C>, never reused within a run, each checked free
    (the sidecar port and the kernel ports bind) before it is handed out."""

    def __init__(self):
        # A second octet of its own per process, held by a lock file for the
        # life of the process: two test runs on one machine never hand out
        # the same address (the bind check below cannot see an address that
        # the other run checked and has not bound yet).
        self.a, self._octet_lock = self._own_octet()
        self.counter = itertools.count(2)
        self.lock = threading.Lock()

    @staticmethod
    def _own_octet():
        for a in range(100, 255):
            f = open(f"/tmp/nbo-kubelet-ips-127.{a}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return a, f
            except OSError:
                f.close()
        raise RuntimeError("every 127.100-254.0.0/16 is held by another test run")

    def take(self, ports) -> str:
        with self.lock:
            for _ in range(1000):
                n = next(self.counter)
                b, c = divmod(n, 254)
                ip = f"127.{self.a}.{b % 256}.{c + 1}"
                if self._free(ip, ports):
                    return ip
        raise RuntimeError("no free 127.0.0.0/8 address for a pod")

    @staticmethod
    def _free(ip, ports) -> bool:
        socks = []
        try:
            for p in ports:
                s = socket.socket()
                socks.append(s)
                s.bind((ip, p))
            return True
        except OSError:
            return False
        finally:
            for s in socks:
                s.close()


class Container:
    """One container's process, started and restarted by its PodRunner."""

    def __init__(self, name: str, spec: dict, sidecar: bool):
        self.name = name
        self.spec = spec
        self.sidecar = sidecar
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.started_at: str | None = None
        self.last_exit: dict | None = None
        self.waiting: tuple[str, str] | None = ("PodInitializing", "") if not sidecar else ("ContainerCreating", "")
        self.ready = False
        self.started = False  # startup probe passed (sidecar) or process started (kernel)
        self.argv: list[str] = []
        self.env: dict = {}
        self.cwd: str | None = None
        self.log: pathlib.Path | None = None
        self.termination_log: pathlib.Path | None = None

    @property
    def image(self) -> str:
        return self.spec.get("image", "")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        assert self.log is not None
        out = open(self.log, "ab")
        out.write(f"--- start {now_rfc3339()}: {' '.join(self.argv)}\n".encode())
        out.flush()
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True)
        out.close()
        self.started_at = now_rfc3339()
        self.waiting = None

    def take_termination_message(self) -> str | None:
        """What the exited process wrote to its termination message file
        (the kubelet's terminationMessagePath, at most 4096 bytes), removed
        so the next instance starts with none, as the kubelet gives each
        container instance a fresh file."""
        if self.termination_log is None or not self.termination_log.exists():
            return None
        text = self.termination_log.read_bytes()[:4096].decode(errors="replace")
        self.termination_log.unlink()
        return text or None

    def signal(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float) -> str:
        """SIGTERM, then SIGKILL after `grace` seconds; waits for the exit.
        Says how it went, for the log."""
        if self.proc is None:
            return f"{self.name}: never started"
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        how = "exited on SIGTERM"
        try:
            self.proc.wait(timeout=max(0.1, grace))
        except subprocess.TimeoutExpired:
            how = f"SIGKILL after {grace:.1f}s"
            self.signal(signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                how += " (still there)"
        # Whatever else is left in the process group (a kernel's children).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return f"{self.name}: {how} in {time.monotonic() - t0:.2f}s"

    def state(self) -> dict:
        if self.waiting is not None:
            reason, message = self.waiting
            st = {"waiting": {"reason": reason}}
            if message:
                st["waiting"]["message"] = message
            return st
        if self.running():
            return {"running": {"startedAt": self.started_at}}
        code = self.proc.returncode if self.proc is not None else 0
        return {"terminated": {"exitCode": code if code >= 0 else 128 - code,
                               "reason": "Completed" if code == 0 else "Error",
                               "startedAt": self.started_at, "finishedAt": now_rfc3339()}}

    def status(self) -> dict:
        st = {"name": self.name, "image": self.image, "imageID": "", "ready": self.ready,
              "started": self.started, "restartCount": self.restarts, "state": self.state()}
        if self.proc is not None:
            st["containerID"] = f"standin://{self.proc.pid}"
            st["imageID"] = f"standin://{self.image}"
        if self.last_exit:
            st["lastState"] = {"terminated": self.last_exit}
        return st


class PodRunner(threading.Thread):
    """Runs one pod until it is deleted."""

    def __init__(self, kubelet: "StandInKubelet", pod: dict):
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.kube: Kube = kubelet.kube
        self.pod = pod
        self.ns = meta["namespace"]
        self.name = meta["name"]
        self.uid = meta["uid"]
        self.root = kubelet.root / "pods" / self.ns / f"{self.name}-{self.uid[:8]}"
        self.terminating = threading.Event()
        self.done = threading.Event()
        self.ip: str | None = None
        self.start_time = now_rfc3339()
        self.phase = "Pending"
        self.conditions: dict[str, dict] = {}
        spec = pod["spec"]
        self.init = [Container(c["name"], c, sidecar=True) for c in spec.get("initContainers", [])]
        self.main = [Container(c["name"], c, sidecar=False) for c in spec["containers"]]
        self.volumes: dict[str, pathlib.Path] = {}
        self.last_written: str | None = None
        self.runnable = any((c.spec.get("args") or [None])[0] == "sidecar" for c in self.init)

    def log(self, msg: str):
        self.kubelet.log(f"{self.ns}/{self.name} {self.uid[:8]}: {msg}")

    # -- volumes and paths ----------------------------------------------------
    def read(self, p: str) -> dict:
        """GET p, again while the apiserver is unreachable, starting (5xx,
        429) or has not got the object yet (404), as a kubelet retries a
        volume it cannot mount yet; bounded by VOLUME_WAIT_S, or until the pod
        is deleted. A pod started the moment the apiserver went down once
        failed here for good and stayed Pending (the CI runs of 2026-12-02)."""
        deadline = time.monotonic() + VOLUME_WAIT_S
        while True:
            try:
                return self.kube.get(p)
            except ApiError as e:
                if not (e.status in (404, 429) or e.status >= 500) or time.monotonic() > deadline:
                    raise
                why = f"HTTP {e.status}"
            except requests.RequestException as e:
                if time.monotonic() > deadline:
                    raise
                why = type(e).__name__
            self.log(f"volume source {p}: {why}, retried")
            if self.terminating.wait(0.5):
                raise RuntimeError(f"deleted while waiting for {p}")

    def prepare_volumes(self):
        for vol in self.pod["spec"].get("volumes", []):
            name = vol["name"]
            if "emptyDir" in vol:
                d = self.root / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
            elif "secret" in vol:
                d = self.root / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
                sec = self.read(path("Secret", self.ns, vol["secret"]["secretName"]))
                mode = vol["secret"].get("defaultMode", 0o644)
                for key, b64 in (sec.get("data") or {}).items():
                    f = d / key
                    f.write_bytes(base64.b64decode(b64))
                    f.chmod(mode | 0o400)
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                deadline = time.monotonic() + VOLUME_WAIT_S
                while True:
                    pvc = self.read(path("PersistentVolumeClaim", self.ns, claim))
                    pv_name = pvc["spec"].get("volumeName")
                    if pv_name:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"claim {claim} is not bound")
                    if self.terminating.wait(0.5):
                        raise RuntimeError(f"deleted while claim {claim} was not bound")
                pv = self.read(path("PersistentVolume", None, pv_name))
                d = pathlib.Path(pv["spec"]["hostPath"]["path"])
                d.mkdir(parents=True, exist_ok=True)
            else:
                raise RuntimeError(f"volume {name}: kind not supported by the stand-in kubelet: {vol}")
            self.volumes[name] = d

    def host_path(self, container: Container, p: str) -> str:
        """Where absolute container path p lives on the host, through the
        container's mounts (longest mount path first); else in a per-container
        root directory."""
        best = None
        for m in container.spec.get("volumeMounts", []):
            mp = m["mountPath"].rstrip("/")
            if p == mp or p.startswith(mp + "/"):
                if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                    best = m
        if best is None:
            host = self.root / "rootfs" / container.name / p.lstrip("/")
        else:
            base = self.volumes[best["name"]]
            if best.get("subPath"):
                base = base / best["subPath"]
                base.mkdir(parents=True, exist_ok=True)
            rest = p[len(best["mountPath"].rstrip("/")):].lstrip("/")
            host = base / rest if rest else base
        return str(host)

    def rewrite(self, container: Container, args: list[str]) -> list[str]:
        out = []
        for a in args:
            if a.startswith("/"):
                out.append(self.host_path(container, a))
            elif a.startswith("--") and "=" in a and a.split("=", 1)[1].startswith("/"):
                flag, value = a.split("=", 1)
                out.append(f"{flag}={self.host_path(container, value)}")
            else:
                out.append(a)
        return out

    def container_env(self, container: Container) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "LC_ALL", "TZ", "RUST_BACKTRACE", "TMPDIR")}
        home = self.host_path(container, "/home/jovyan")
        pathlib.Path(home).mkdir(parents=True, exist_ok=True)
        env["HOME"] = home
        env["HOSTNAME"] = self.name
        for e in container.spec.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif (field := self.field_ref(e)) is not None:
                env[e["name"]] = field
        return env

    def field_ref(self, e: dict) -> str | None:
        """The downward API's `valueFrom.fieldRef` a kubelet resolves: the
        pod's IP, name and namespace; None for anything else."""
        path = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        return {
            "status.podIP": self.ip,
            "metadata.name": self.name,
            "metadata.namespace": self.ns,
        }.get(path)

    def sidecar_port(self, container: Container) -> int:
        for p in container.spec.get("ports", []):
            return int(p["containerPort"])
        return SIDECAR_PORT_DEFAULT

    def probe_url(self, container: Container, kind: str) -> tuple[str, float, float, int] | None:
        probe = container.spec.get(kind)
        if not probe or "httpGet" not in probe:
            return None
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(int(p["containerPort"]) for p in container.spec.get("ports", []) if p.get("name") == port)
        url = f"http://{self.ip}:{port}{get.get('path', '/')}"
        return url, float(probe.get("periodSeconds", 10)), float(probe.get("timeoutSeconds", 1)), \
            int(probe.get("failureThreshold", 3))

    def probe(self, url: str, timeout: float) -> bool:
        try:
            return 200 <= requests.get(url, timeout=timeout).status_code < 400
        except requests.RequestException:
            return False

    # -- commands ---------------------------------------------------------------
    def build_sidecar(self, c: Container):
        args = list(c.spec.get("args") or [])
        if c.spec.get("command"):
            raise RuntimeError("the sidecar has a command; the stand-in runs the image entrypoint only")
        out = []
        it = iter(self.rewrite(c, args))
        for a in it:
            if a == "--listen":
                port = next(it).rsplit(":", 1)[1]
                out += ["--listen", f"{self.ip}:{port}"]
            elif a.startswith("--listen="):
                out.append(f"--listen={self.ip}:{a.rsplit(':', 1)[1]}")
            else:
                out.append(a)
        out += ["--kernel-ip", self.ip]
        c.argv = [str(self.kubelet.operator_bin)] + out
        c.env = self.container_env(c)
        c.env["RUST_LOG"] = os.environ.get("NBO_SIDECAR_LOG", "info")
        # The sidecar writes its termination message to /dev/termination-log,
        # which the kubelet bind-mounts per container; a host process is
        # told a per-pod file instead.
        c.termination_log = self.root / f"{c.name}.termination-log"
        c.env["NOTEBOOK_TERMINATION_LOG"] = str(c.termination_log)
        c.cwd = str(self.root)
        c.log = self.root / f"{c.name}.log"

    def build_main(self, c: Container):
        cmd = list(c.spec.get("command") or []) + list(c.spec.get("args") or [])
        if not cmd:
            raise RuntimeError(f"container {c.name} has no command; the stand-in cannot run an image entrypoint")
        cmd = self.rewrite(c, cmd)
        if cmd[0] in ("python", "python3"):
            cmd[0] = self.kubelet.python
        c.argv = cmd
        c.env = self.container_env(c)
        wd = c.spec.get("workingDir")
        c.cwd = self.host_path(c, wd) if wd else str(self.root)
        pathlib.Path(c.cwd).mkdir(parents=True, exist_ok=True)
        c.log = self.root / f"{c.name}.log"

    # -- status -----------------------------------------------------------------
    def set_condition(self, type_: str, status: bool, reason: str = ""):
        s = "True" if status else "False"
        old = self.conditions.get(type_)
        if old and old["status"] == s and old.get("reason", "") == reason:
            return
        c = {"type": type_, "status": s, "lastProbeTime": None,
             "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == s else now_rfc3339()}
        if reason:
            c["reason"] = reason
        self.conditions[type_] = c

    def write_status(self):
        init_started = all(c.started for c in self.init)
        mains_ready = all(c.ready for c in self.main)
        sidecars_ready = all(c.ready for c in self.init)
        self.set_condition("PodReadyToStartContainers", self.ip is not None)
        self.set_condition("Initialized", init_started, "" if init_started else "ContainersNotInitialized")
        ready = init_started and mains_ready and sidecars_ready
        self.set_condition("ContainersReady", ready, "" if ready else "ContainersNotReady")
        self.set_condition("Ready", ready, "" if ready else "ContainersNotReady")
        self.phase = "Running" if any(c.running() for c in self.main) else "Pending"
        status = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": list(self.conditions.values()),
            "initContainerStatuses": [c.status() for c in self.init],
            "containerStatuses": [c.status() for c in self.main],
        }
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        # Written only when something a reader sees changed (not, say, the
        # finishedAt of a dead process, which is "now" on every call).
        key = json.dumps([self.phase, self.ip, sorted((k, v["status"]) for k, v in self.conditions.items()),
                          [(c.name, list(c.state())[0], c.waiting, c.ready, c.started, c.restarts)
                           for c in self.init + self.main]])
        if key == self.last_written or self.terminating.is_set():
            return
        try:
            self.kube.patch(path("Pod", self.ns, self.name, "status"), {"status": status}, kind="strategic")
            self.last_written = key
            self.log(f"status: phase={self.phase} ready={ready} "
                     + " ".join(f"{c.name}={list(c.state())[0]}{'/ready' if c.ready else ''}"
                                for c in self.init + self.main))
        except ApiError as e:
            # 404/409: the pod went or moved on. 429/5xx: the apiserver (or
            # its etcd) is down or starting; as a kubelet does, the status
            # is written again on the next pass (last_written is unchanged).
            if e.status in (404, 409, 429) or e.status >= 500:
                self.log(f"status write: {e}")
            else:
                raise
        except requests.RequestException as e:
            self.log(f"status write (apiserver unreachable, retried): {type(e).__name__}")

    # -- life -------------------------------------------------------------------
    def run(self):
        try:
            self.live()
        except Exception:  # noqa: BLE001 - a broken pod must not stop the kubelet
            self.log("failed:\n" + traceback.format_exc())
            # Leave it as it is until it is deleted, then confirm that.
            self.wait_or_terminating(MAX_POD_LIFE_S)
        finally:
            try:
                self.terminate()
            except Exception:  # noqa: BLE001
                self.log("terminate failed:\n" + traceback.format_exc())
            self.done.set()

    def wait_or_terminating(self, seconds: float) -> bool:
        """Sleeps; True when the pod is being deleted."""
        return self.terminating.wait(seconds)

    def live(self):
        if not self.runnable:
            self.log("not a kernel pod; left Pending (its deletion is still confirmed)")
            self.wait_or_terminating(MAX_POD_LIFE_S)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        sidecar_ports = [self.sidecar_port(c) for c in self.init] or [SIDECAR_PORT_DEFAULT]
        self.ip = self.kubelet.ips.take(sidecar_ports + list(KERNEL_PORTS))
        self.prepare_volumes()
        self.log(f"pod IP {self.ip}, root {self.root}")

        # Init containers (native sidecars), in order, each to its startup probe.
        for c in self.init:
            if PULL_FAILS in c.image:
                c.waiting = ("ImagePullBackOff", f'Back-off pulling image "{c.image}"')
                self.write_status()
                self.wait_or_terminating(MAX_POD_LIFE_S)
                return
            self.build_sidecar(c)
            c.start()
            self.write_status()
            startup = self.probe_url(c, "startupProbe")
            if startup:
                url, period, timeout, failures = startup
                deadline = time.monotonic() + max(30.0, min(period * failures, 300.0))
                while not self.probe(url, timeout):
                    if not c.running():
                        raise RuntimeError(f"sidecar exited with {c.proc.returncode}; see {c.log}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sidecar startup probe {url} never passed; see {c.log}")
                    if self.wait_or_terminating(0.05):
                        return
            c.started = True
            self.write_status()

        for c in self.main:
            if PULL_FAILS in c.image:
                c.waiting = ("ImagePullBackOff", f'Back-off pulling image "{c.image}"')
                continue
            self.build_main(c)
            c.start()
            c.started = True
            c.ready = self.probe_url(c, "readinessProbe") is None
        self.write_status()

        # Probe readiness and keep the processes running, until deleted.
        probes = {c.name: self.probe_url(c, "readinessProbe") for c in self.init + self.main}
        fails = {name: 0 for name in probes}
        born = time.monotonic()
        while time.monotonic() - born < MAX_POD_LIFE_S:
            for c in self.init + self.main:
                if c.proc is None:
                    continue
                if not c.running() and not self.terminating.is_set():
                    code = c.proc.returncode
                    self.log(f"container {c.name} exited with {code}; restarting it")
                    c.last_exit = {"exitCode": code if code >= 0 else 128 - code,
                                   "reason": "Completed" if code == 0 else "Error",
                                   "startedAt": c.started_at, "finishedAt": now_rfc3339()}
                    message = c.take_termination_message()
                    if message:
                        c.last_exit["message"] = message
                    c.restarts += 1
                    c.ready = False
                    c.start()
                    if not probes[c.name]:
                        c.ready = True
                pr = probes[c.name]
                if pr and c.running():
                    url, _, timeout, failures = pr
                    if self.probe(url, min(timeout, 2.0)):
                        fails[c.name] = 0
                        c.ready = True
                    else:
                        fails[c.name] += 1
                        if fails[c.name] >= failures or not c.ready:
                            c.ready = False
            self.write_status()
            # Probes every 0.2 s: faster than the pod's periodSeconds, so tests
            # do not wait for a 5 s period; the apiserver sees only changes.
            if self.wait_or_terminating(0.2):
                return

    def terminate(self):
        """Kills the containers (main first, then the sidecars, as the kubelet
        orders a pod with native sidecars) and confirms the deletion."""
        deleting = self.terminating.is_set()
        grace = self.kubelet.grace_of(self.pod) if deleting else 0
        deadline = time.monotonic() + grace
        stops = [c.stop(max(0.5, deadline - time.monotonic())) for c in self.main]
        stops += [c.stop(max(2.0, deadline - time.monotonic())) for c in reversed(self.init)]
        self.log("stopped: " + "; ".join(stops))
        if deleting and not self.kubelet.stopping.is_set():
            self.kube.delete(path("Pod", self.ns, self.name), grace=0, uid=self.uid)
            self.log("deletion confirmed (grace 0)")


class StandInKubelet:
    def __init__(self, kube: Kube, node: str, root: pathlib.Path, operator_bin: pathlib.Path,
                 python: str = sys.executable, grace_cap: float = 10.0):
        self.kube = kube
        self.node = node
        self.root = root
        self.operator_bin = operator_bin
        self.python = python
        self.grace_cap = grace_cap
        self.ips = IpPool()
        self.namespaces: set[str] = set()
        self.runners: dict[str, PodRunner] = {}
        self.provisioned: set[str] = set()
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.responses: dict[str, requests.Response | None] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "kubelet.log"
        self._log = open(self.log_path, "a", buffering=1)

    def log(self, msg: str):
        line = f"{datetime.datetime.now().strftime('%H:%M:%S.%f')[:-3]} {msg}\n"
        with self.lock:
            self._log.write(line)

    def grace_of(self, pod: dict) -> float:
        g = pod["metadata"].get("deletionGracePeriodSeconds")
        if g is None:
            g = pod["spec"].get("terminationGracePeriodSeconds", 30)
        return min(float(g), self.grace_cap)

    # -- namespaces ---------------------------------------------------------------
    def manage(self, namespace: str):
        with self.lock:
            self.namespaces.add(namespace)
        # Catch up with what the watches skipped before.
        for pvc in self.kube.list(path("PersistentVolumeClaim", namespace)):
            self.on_pvc("ADDED", pvc)
        for pod in self.kube.list(path("Pod", namespace), fieldSelector=f"spec.nodeName={self.node}"):
            self.on_pod("ADDED", pod)

    def unmanage(self, namespace: str):
        """Stops running new pods of `namespace` (they stay Pending, as on a
        node that is full); deletions are still confirmed."""
        with self.lock:
            self.namespaces.discard(namespace)

    def managed(self, obj: dict) -> bool:
        with self.lock:
            return obj["metadata"].get("namespace") in self.namespaces

    def runners_in(self, namespace: str) -> list[PodRunner]:
        with self.lock:
            return [r for r in self.runners.values() if r.ns == namespace]

    # -- watches --------------------------------------------------------------------
    def start(self):
        for name, p, params, handler in (
            ("pods", path("Pod"), {"fieldSelector": f"spec.nodeName={self.node}"}, self.on_pod),
            ("pvcs", path("PersistentVolumeClaim"), {}, self.on_pvc),
        ):
            t = threading.Thread(target=self.watch_loop, args=(name, p, params, handler),
                                 name=f"kubelet-watch-{name}", daemon=True)
            t.start()
            self.threads.append(t)

    def watch_loop(self, name, p, params, handler):
        """List, then watch from that version; relist on 410 or any error,
        and every RELIST_S anyway: a pod bound while the apiserver and its
        etcd restarted was once never seen by the watch (the CI run of
        2026-12-02), and a kubelet that misses a pod leaves it Pending for
        good. Handlers take an object seen again as a no-op."""
        while not self.stopping.is_set():
            try:
                listing = self.kube.get(p, **params)
                for o in listing.get("items", []):
                    handler("ADDED", o)
                rv = listing["metadata"]["resourceVersion"]
                relist_at = time.monotonic() + RELIST_S
                while not self.stopping.is_set() and time.monotonic() < relist_at:
                    for typ, o in self.kube.watch(p, rv, timeout=30, stop=self.stopping,
                                                  on_response=lambda r: self.responses.__setitem__(name, r),
                                                  **params):
                        rv = o["metadata"]["resourceVersion"]
                        if typ != "BOOKMARK":
                            handler(typ, o)
            except ApiError as e:
                if e.status != 410:
                    self.log(f"watch {name}: {e}")
                    self.stopping.wait(0.5)
            except Exception as e:  # noqa: BLE001 - keep watching whatever happens
                if not self.stopping.is_set():
                    self.log(f"watch {name}: {type(e).__name__}: {e}")
                    self.stopping.wait(0.5)

    def on_pod(self, typ: str, pod: dict):
        """Runs the pods of managed namespaces; confirms the deletion of any
        pod on the node (as a kubelet would; without it a namespace with a
        pod nobody ran never finishes terminating)."""
        try:
            if pod["spec"].get("nodeName") != self.node:
                return
            uid = pod["metadata"]["uid"]
            with self.lock:
                runner = self.runners.get(uid)
                if typ == "DELETED":
                    if runner:
                        runner.terminating.set()
                    return
                if pod["metadata"].get("deletionTimestamp"):
                    if runner is None:
                        # Never ran here: nothing to stop.
                        threading.Thread(target=self.confirm_deletion, args=(pod,), daemon=True).start()
                    else:
                        runner.pod = pod
                        runner.terminating.set()
                    return
                if runner is None and self.managed(pod):
                    runner = PodRunner(self, pod)
                    self.runners[uid] = runner
                    self.log(f"{runner.ns}/{runner.name} {uid[:8]}: start")
                    runner.start()
        except Exception:  # noqa: BLE001
            self.log("on_pod:\n" + traceback.format_exc())

    def confirm_deletion(self, pod: dict):
        meta = pod["metadata"]
        try:
            self.kube.delete(path("Pod", meta["namespace"], meta["name"]), grace=0, uid=meta["uid"])
            self.log(f"{meta['namespace']}/{meta['name']} {meta['uid'][:8]}: deletion confirmed (not run here)")
        except Exception as e:  # noqa: BLE001
            self.log(f"confirm deletion of {meta['name']}: {e}")

    # -- the provisioner --------------------------------------------------------------
    def on_pvc(self, typ: str, pvc: dict):
        """One hostPath PersistentVolume per claim, pre-bound to it."""
        try:
            if typ == "DELETED" or not self.managed(pvc):
                return
            meta = pvc["metadata"]
            if pvc["spec"].get("volumeName") or meta["uid"] in self.provisioned:
                return
            self.provisioned.add(meta["uid"])
            host = self.root / "volumes" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
            host.mkdir(parents=True, exist_ok=True)
            pv = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": f"standin-{meta['uid']}", "labels": {"nbo.test/stand-in": "true"}},
                "spec": {
                    "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                    "accessModes": pvc["spec"].get("accessModes", ["ReadWriteOnce"]),
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": pvc["spec"].get("storageClassName") or "",
                    "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
                    "hostPath": {"path": str(host), "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                },
            }
            self.kube.create(path("PersistentVolume"), pv)
            self.log(f"{meta['namespace']}/{meta['name']}: provisioned {pv['metadata']['name']} at {host}")
        except ApiError as e:
            if e.status != 409:
                self.log(f"provision: {e}")
        except Exception:  # noqa: BLE001
            self.log("on_pvc:\n" + traceback.format_exc())

    # -- shutdown ---------------------------------------------------------------------
    def stop(self, timeout: float = 30.0):
        self.stopping.set()
        for r in list(self.responses.values()):
            if r is not None:
                try:
                    r.close()
                except Exception:  # noqa: BLE001
                    pass
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            r.kubelet.grace_cap = 0
            r.terminating.set()
        deadline = time.monotonic() + timeout
        for r in runners:
            r.done.wait(max(0.1, deadline - time.monotonic()))
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def cleanup_volumes(self):
        """Deletes the PVs this provisioner made (Retain: the data dirs stay in root)."""
        for pv in self.kube.list(path("PersistentVolume"), labelSelector="nbo.test/stand-in=true"):
            self.kube.delete(path("PersistentVolume", None, pv["metadata"]["name"]))

    def remove_root(self):
        shutil.rmtree(self.root, ignore_errors=True)
