"""Tier 4, issue 7: guarantee 6 on a real control plane. "An asset is deleted
only when its lease expired and nothing references it": the operator (with
the chart's RBAC) gives each new asset an AssetLease and enforces it at
exactly its expiresAt; the stand-in kubelet runs the real sidecar and
ipykernel, whose DELETE re-reads the notebooks under its lock.

Times are compared on this machine's clock, which the sidecar, the operator
and the apiserver share."""
import json
import pathlib
import time

from kube import path
from sessions import SidecarApi, create_session, get_session, parse_time, wait_ready, wait_until

# "within 1 s of its lease's expiresAt"
SLACK = 1.0
# Long enough that the lease (applied when the execution that made the asset
# finishes, through the sidecar status long poll) exists well before it expires.
LEASE_S = 20

BIG_PNG = ("import base64, os\nfrom IPython.display import display\n"
           "payload = b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(1 << 20)\n"
           "display({'image/png': base64.b64encode(payload).decode(), 'text/plain': '<1 MB image>'}, raw=True)\n"
           "print(__import__('hashlib').sha256(payload).hexdigest())")


def notebook_referencing(asset_path: str) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{
        "cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1, "source": "plot()",
        "outputs": [{"output_type": "display_data", "metadata": {},
                     "data": {"text/markdown": f"![image/png]({asset_path})", "text/plain": "<Figure>"}}]}]}


def workspace(ns, session: str) -> pathlib.Path:
    """The host directory the stand-in kubelet mounted as the sidecar's workspace."""
    runner = next(r for r in ns.kubelet.runners_in(ns) if r.name == f"{session}-kernel" and not r.done.is_set())
    sidecar = next(c for c in runner.init if c.name == "sidecar")
    return pathlib.Path(runner.host_path(sidecar, "/home/jovyan/work"))


def make_png(api: SidecarApi) -> str:
    """Runs a cell that displays a 1 MB PNG; returns the asset's name."""
    e = api.wait_final(api.submit(BIG_PNG)["id"], timeout=120)
    assert e["state"] == "completed", e
    sha = next(o["text"].strip() for o in e["outputs"] if o["output_type"] == "stream")
    return f"{sha}.png"


def lease_name(session: str, asset: str) -> str:
    sha, ext = asset.split(".")
    return f"{session}-{sha[:16]}.{ext}"


def lease_phase(lease) -> str | None:
    return ((lease or {}).get("status") or {}).get("phase")


def condition(lease, type_: str) -> dict:
    return next((c for c in (lease.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def wait_lease(kube, ns, name, predicate, timeout, what):
    return kube.wait_for("AssetLease", ns, name, predicate, timeout, f"AssetLease {ns}/{name} {what}")


def new_asset_with_lease(kube, ns, session, api, ws):
    asset = make_png(api)
    assert (ws / "assets" / asset).exists()
    name = lease_name(session, asset)
    lease = wait_lease(kube, ns, name, lambda o: o and (o.get("status") or {}).get("expiresAt"), 30,
                       "with expiresAt")
    return asset, name, lease


def test_guarantee_6_an_unreferenced_asset_is_deleted_within_1s_of_its_lease_expiry(ns):
    kube = ns.kube
    create_session(kube, ns, "plots", assets={"leaseDuration": f"{LEASE_S}s"})
    wait_ready(kube, ns, "plots")
    api, ws = SidecarApi(kube, ns, "plots"), workspace(ns, "plots")
    session = get_session(kube, ns, "plots")

    asset, name, lease = new_asset_with_lease(kube, ns, "plots", api, ws)
    file = ws / "assets" / asset
    created = file.stat().st_mtime
    # The lease: owned by the session, on this asset, lasting the session's leaseDuration from the asset's creation.
    [owner] = lease["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("NotebookSession", "plots", session["metadata"]["uid"])
    assert lease["spec"]["sessionRef"] == {"name": "plots"}
    assert lease["spec"]["path"] == f"assets/{asset}"
    assert lease["spec"]["duration"] == f"{LEASE_S}s"
    start = parse_time(lease["spec"]["startTime"])
    assert created <= start < created + 1, (created, lease["spec"])
    expires = parse_time(lease["status"]["expiresAt"])
    assert expires == start + LEASE_S
    assert lease_phase(lease) == "Active"
    assert "notebook.dev/release-asset" in lease["metadata"]["finalizers"]

    # Not a moment before its expiry, and within a second after it.
    gone = wait_until(lambda: not file.exists(), timeout=expires - time.time() + 15, what="the asset deleted")
    assert expires <= gone <= expires + SLACK, f"deleted {gone - expires:+.3f} s from expiresAt"
    lease = wait_lease(kube, ns, name, lambda o: lease_phase(o) == "Reclaimed", 10, "Reclaimed")
    assert condition(lease, "InUse")["status"] == "False"
    assert condition(lease, "AssetMissing")["status"] == "False"
    assert {a["name"] for a in api.http.get(api.url + "/v1/assets").json()["assets"]}.isdisjoint({asset})

    # Deleting a lease by hand releases its asset at once.
    other, other_lease, _ = new_asset_with_lease(kube, ns, "plots", api, ws)
    kube.delete(path("AssetLease", ns, other_lease))
    wait_lease(kube, ns, other_lease, lambda o: o is None, 30, "deleted")
    assert not (ws / "assets" / other).exists(), "a released, unreferenced asset is deleted"


def test_guarantee_6_a_notebook_saved_just_before_expiry_keeps_the_asset_and_the_lease_is_retained(ns):
    """The seed's race: the notebook that references the asset is saved a
    moment before the lease expires, too late for the sidecar's index to have
    seen it when the operator reads it. The sidecar's delete re-reads the
    notebooks under its lock and refuses; the lease is Retained."""
    kube = ns.kube
    create_session(kube, ns, "report", assets={"leaseDuration": f"{LEASE_S}s"})
    wait_ready(kube, ns, "report")
    api, ws = SidecarApi(kube, ns, "report"), workspace(ns, "report")

    asset, name, lease = new_asset_with_lease(kube, ns, "report", api, ws)
    expires = parse_time(lease["status"]["expiresAt"])
    time.sleep(max(0.0, expires - time.time() - 0.05))
    notebook = ws / "reports" / "analysis.ipynb"
    notebook.parent.mkdir(exist_ok=True)
    notebook.write_text(json.dumps(notebook_referencing(f"assets/{asset}")))
    saved = time.time()
    assert saved < expires + 0.2, f"saved {saved - expires:+.3f} s from expiresAt; the machine is too slow"

    lease = wait_lease(kube, ns, name, lambda o: lease_phase(o) == "Retained", 15, "Retained")
    assert lease["status"]["referencedBy"] == ["reports/analysis.ipynb"], lease["status"]
    assert condition(lease, "InUse")["reason"] == "Referenced", lease["status"]
    # Retained is the witness: the check that could have deleted it ran.
    assert (ws / "assets" / asset).exists(), "a referenced asset survives its lease"

    # Deleting the lease by hand does not delete a referenced asset; the
    # asset gets a lease again, which is Retained at once.
    kube.delete(path("AssetLease", ns, name))
    wait_lease(kube, ns, name, lambda o: o is None or o["metadata"].get("deletionTimestamp") is None
               and o["metadata"]["uid"] != lease["metadata"]["uid"], 30, "released")
    assert (ws / "assets" / asset).exists()
    lease = wait_lease(kube, ns, name, lambda o: lease_phase(o) == "Retained", 30, "back and Retained")
    checked = parse_time(lease["status"]["lastCheckTime"])

    # Once nothing references it, the next check (one duration after the last) deletes it.
    notebook.unlink()
    gone = wait_until(lambda: not (ws / "assets" / asset).exists(), timeout=checked + LEASE_S - time.time() + 15,
                      step=0.02, what="deleted at the next check")
    assert checked + LEASE_S <= gone <= checked + LEASE_S + SLACK, f"{gone - checked - LEASE_S:+.3f} s"
    wait_lease(kube, ns, name, lambda o: lease_phase(o) == "Reclaimed", 10, "Reclaimed")
