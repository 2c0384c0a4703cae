"""A small Kubernetes API client for the tier-4 tests: JSON dicts over HTTPS.

Why not the official `kubernetes` package: the tests assert the JSON shapes
the apiserver stores (the same field names as the YAML users write), the
stand-in kubelet needs streaming watches whose reconnects and timeouts it
controls, and everything here is a handful of REST calls on top of
`requests`, which the tests already pin. Every call has a timeout; every
wait has a deadline.
"""
from __future__ import annotations

import base64
import json
import pathlib
import random
import re
import string
import subprocess
import threading
import time
from typing import Callable, Iterator

import requests
import yaml

# kind -> (group/version path prefix, plural, namespaced)
KINDS = {
    "Namespace": ("api/v1", "namespaces", False),
    "Node": ("api/v1", "nodes", False),
    "Pod": ("api/v1", "pods", True),
    "Service": ("api/v1", "services", True),
    "Secret": ("api/v1", "secrets", True),
    "ConfigMap": ("api/v1", "configmaps", True),
    "Event": ("api/v1", "events", True),
    "ServiceAccount": ("api/v1", "serviceaccounts", True),
    "PersistentVolumeClaim": ("api/v1", "persistentvolumeclaims", True),
    "PersistentVolume": ("api/v1", "persistentvolumes", False),
    "Deployment": ("apis/apps/v1", "deployments", True),
    "ReplicaSet": ("apis/apps/v1", "replicasets", True),
    "Lease": ("apis/coordination.k8s.io/v1", "leases", True),
    "ClusterRole": ("apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "NetworkPolicy": ("apis/networking.k8s.io/v1", "networkpolicies", True),
    "CustomResourceDefinition": ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "NotebookSession": ("apis/notebook.dev/v1alpha1", "notebooksessions", True),
    "AssetLease": ("apis/notebook.dev/v1alpha1", "assetleases", True),
    "NotebookPool": ("apis/notebook.dev/v1alpha1", "notebookpools", True),
}


def path(kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """The REST path of a kind, a namespace's collection of it, or one object."""
    prefix, plural, namespaced = KINDS[kind]
    p = "/" + prefix
    if namespaced and namespace:
        p += f"/namespaces/{namespace}"
    p += "/" + plural
    if name:
        p += "/" + name
    if sub:
        p += "/" + sub
    return p


def namespace_for_test(test_name: str) -> str:
    """A fresh namespace name for a test: its name, shortened, and 4 random characters."""
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")[:40].strip("-")
    return f"{base}-{''.join(random.choices(string.ascii_lowercase + string.digits, k=4))}"


def obj_path(obj: dict, sub: str | None = None) -> str:
    meta = obj["metadata"]
    return path(obj["kind"], meta.get("namespace"), meta["name"], sub)


class ApiError(Exception):
    def __init__(self, method: str, url: str, status: int, body: str):
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
            message = json.loads(body).get("message", body)
        except ValueError:
            self.reason, message = "", body
        super().__init__(f"{method} {url}: {status} {self.reason}: {message[:2000]}")


class Kube:
    """One identity against one apiserver. Thread-safe: one HTTP session per thread."""

    def __init__(self, server: str, ca: str, cert: tuple[str, str] | None = None, token: str | None = None):
        self.server = server.rstrip("/")
        self.ca = ca
        self.cert = cert
        self.token = token
        self._local = threading.local()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: pathlib.Path, workdir: pathlib.Path) -> "Kube":
        """Reads a kubeconfig with embedded data (as tests/cluster/up writes them)."""
        raw = subprocess.run(["kubectl", "config", "view", "--raw", "-o", "json", "--kubeconfig", str(kubeconfig)],
                             check=True, capture_output=True, text=True, timeout=30).stdout
        cfg = json.loads(raw)
        ctx_name = cfg["current-context"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        workdir.mkdir(parents=True, exist_ok=True)

        def write(name: str, b64: str) -> str:
            f = workdir / name
            f.write_bytes(base64.b64decode(b64))
            f.chmod(0o600)
            return str(f)

        ca = write("ca.crt", cluster["certificate-authority-data"])
        cert = None
        if "client-certificate-data" in user:
            cert = (write("client.crt", user["client-certificate-data"]), write("client.key", user["client-key-data"]))
        return cls(cluster["server"], ca, cert=cert, token=user.get("token"))

    # -- transport ------------------------------------------------------------
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.verify = self.ca
            if self.cert:
                s.cert = self.cert
            if self.token:
                s.headers["Authorization"] = f"Bearer {self.token}"
            s.headers["Accept"] = "application/json"
            self._local.session = s
        return s

    def request(self, method: str, p: str, *, params: dict | None = None, body=None,
                content_type: str = "application/json", timeout: float = 30) -> dict:
        url = self.server + p
        data = None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body))
        headers = {"Content-Type": content_type} if data is not None else {}
        # verify= on every call: requests lets REQUESTS_CA_BUNDLE override a
        # session's verify, and the test CA is in no system bundle.
        r = self._session().request(method, url, params=params, data=data, headers=headers, timeout=timeout,
                                    verify=self.ca)
        if r.status_code >= 400:
            raise ApiError(method, url, r.status_code, r.text)
        return r.json() if r.content else {}

    # -- verbs ----------------------------------------------------------------
    def get(self, p: str, **params) -> dict:
        return self.request("GET", p, params=params or None)

    def get_opt(self, p: str) -> dict | None:
        try:
            return self.get(p)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, p: str, **params) -> list[dict]:
        return self.get(p, **params).get("items", [])

    def describe(self, ns: str, kinds: tuple[str, ...]) -> list[str]:
        """Every object of `kinds` in `ns` as YAML (without managedFields), for a failed test's dump."""
        out = []
        for kind in kinds:
            try:
                for o in self.list(path(kind, ns)):
                    o["metadata"].pop("managedFields", None)
                    out.append(f"--- {kind} {o['metadata']['name']}\n" + yaml.safe_dump(o, sort_keys=False))
            except Exception as e:  # noqa: BLE001
                out.append(f"--- {kind}: {e}")
        return out
    def create(self, p: str, obj: dict) -> dict:
        return self.request("POST", p, body=obj)

    def apply(self, obj: dict, manager: str = "nbo-tests") -> dict:
        """Server-side apply (JSON is YAML), forcing ownership of the fields given."""
        return self.request("PATCH", obj_path(obj), params={"fieldManager": manager, "force": "true"},
                            body=obj, content_type="application/apply-patch+yaml")

    def patch(self, p: str, patch: dict | list, kind: str = "merge") -> dict:
        ctype = {"merge": "application/merge-patch+json", "strategic": "application/strategic-merge-patch+json",
                 "json": "application/json-patch+json"}[kind]
        return self.request("PATCH", p, body=patch, content_type=ctype)

    def delete(self, p: str, *, grace: int | None = None, uid: str | None = None,
               propagation: str | None = None, missing_ok: bool = True) -> dict | None:
        opts: dict = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace is not None:
            opts["gracePeriodSeconds"] = grace
        if uid:
            opts["preconditions"] = {"uid": uid}
        if propagation:
            opts["propagationPolicy"] = propagation
        try:
            return self.request("DELETE", p, body=opts)
        except ApiError as e:
            if missing_ok and (e.status == 404 or (uid and e.status == 409)):
                return None
            raise

    # -- watches --------------------------------------------------------------
    def watch(self, p: str, resource_version: str, *, timeout: float, stop: threading.Event | None = None,
              on_response: Callable[[requests.Response | None], None] | None = None,
              **params) -> Iterator[tuple[str, dict]]:
        """Events of one watch request from resource_version, for at most
        `timeout` seconds (the server closes the stream then). Raises ApiError
        410 when the version is too old; the caller lists again."""
        q = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
             "timeoutSeconds": str(max(1, int(timeout))), **params}
        url = self.server + p
        r = self._session().get(url, params=q, stream=True, timeout=(10, timeout + 15), verify=self.ca)
        if on_response:
            on_response(r)
        try:
            if r.status_code >= 400:
                raise ApiError("WATCH", url, r.status_code, r.text)
            for line in r.iter_lines():
                if stop is not None and stop.is_set():
                    return
                if not line:
                    continue
                ev = json.loads(line)
                if ev["type"] == "ERROR":
                    st = ev["object"]
                    raise ApiError("WATCH", url, st.get("code", 500), json.dumps(st))
                yield ev["type"], ev["object"]
        finally:
            if on_response:
                on_response(None)
            r.close()

    def wait_for(self, kind: str, namespace: str | None, name: str, predicate: Callable[[dict | None], object],
                 timeout: float, what: str = "") -> dict | None:
        """Waits, by watching, until predicate(object or None when absent) is
        true; returns the object. Raises TimeoutError with the last state."""
        deadline = time.monotonic() + timeout
        coll = path(kind, namespace)
        last = None
        while True:
            listing = self.get(coll, fieldSelector=f"metadata.name={name}")
            items = listing.get("items", [])
            last = items[0] if items else None
            if predicate(last):
                return last
            rv = listing["metadata"]["resourceVersion"]
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    for typ, o in self.watch(coll, rv, timeout=min(left, 30),
                                             fieldSelector=f"metadata.name={name}"):
                        if typ == "BOOKMARK":
                            rv = o["metadata"]["resourceVersion"]
                            continue
                        rv = o["metadata"]["resourceVersion"]
                        last = None if typ == "DELETED" else o
                        if predicate(last):
                            return last
                        if time.monotonic() >= deadline:
                            break
            except ApiError as e:
                if e.status != 410:
                    raise
                continue
            except requests.RequestException:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or kind + ' ' + name}; "
                                   f"last state: {json.dumps(last)[:3000] if last else 'absent'}")
