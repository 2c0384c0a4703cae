"""Tier 5: guarantee 6 on a real node. A cell displays two images past the
offload threshold (256 KiB): each becomes a file on the pod's workspace
volume with an AssetLease; a notebook written in the kernel container
references one. At expiry the unreferenced one is gone from the volume
(Reclaimed), the referenced one stays (Retained)."""
from __future__ import annotations

import json

from conftest import Api, service_url, session_token
from kube import path
from test_node import exec_in, wait_ready

LEASE_S = 15
BIG_PNG = ("import base64, os, hashlib\nfrom IPython.display import display\n"
           "payload = b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(300 * 1024)\n"
           "display({'image/png': base64.b64encode(payload).decode(), 'text/plain': '<300 KiB image>'}, raw=True)\n"
           "print(hashlib.sha256(payload).hexdigest())")


def make_png(api: Api) -> str:
    e = api.run(BIG_PNG)
    assert e["state"] == "completed", e
    return next(o["text"].strip() for o in e["outputs"] if o["output_type"] == "stream") + ".png"


def lease_name(session: str, asset: str) -> str:
    sha, ext = asset.split(".")
    return f"{session}-{sha[:16]}.{ext}"


def phase(o) -> str | None:
    return ((o or {}).get("status") or {}).get("phase")


def test_an_unreferenced_asset_is_gone_from_the_volume_and_a_referenced_one_stays(ns, kube):
    kube.create(path("NotebookSession", ns), {
        "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
        "metadata": {"name": "plots", "namespace": str(ns)},
        "spec": {"kernel": {"image": ns.node.kernel_image}, "assets": {"leaseDuration": f"{LEASE_S}s"}}})
    s = wait_ready(kube, ns, "plots")
    pod = s["status"]["podName"]
    api = Api(service_url(kube, ns, "plots"), session_token(kube, ns, "plots"))
    loose, kept = make_png(api), make_png(api)
    files = exec_in(ns, pod, "kernel", "ls", "/home/jovyan/work/assets").split()
    assert loose in files and kept in files, files
    # A notebook in the workspace references one of them (written by the kernel, on the volume).
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{
        "cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1, "source": "plot()",
        "outputs": [{"output_type": "display_data", "metadata": {},
                     "data": {"text/markdown": f"![image/png](assets/{kept})", "text/plain": "<Figure>"}}]}]}
    e = api.run(f"import json\njson.dump({nb!r}, open('/home/jovyan/work/report.ipynb', 'w'))")
    assert e["state"] == "completed", e
    for asset in (loose, kept):
        kube.wait_for("AssetLease", ns, lease_name("plots", asset), lambda o: o is not None, 30,
                      f"the AssetLease of {asset}")

    kube.wait_for("AssetLease", ns, lease_name("plots", loose), lambda o: phase(o) == "Reclaimed", LEASE_S + 60,
                  "the unreferenced asset's lease Reclaimed")
    lease = kube.wait_for("AssetLease", ns, lease_name("plots", kept), lambda o: phase(o) == "Retained",
                          LEASE_S + 60, "the referenced asset's lease Retained")
    assert lease["status"]["referencedBy"] == ["report.ipynb"], lease["status"]
    files = exec_in(ns, pod, "kernel", "ls", "/home/jovyan/work/assets").split()
    assert loose not in files, f"{loose} is still on the volume: {files}"
    assert kept in files, f"the referenced {kept} was deleted: {files}"
    assert json.loads(exec_in(ns, pod, "kernel", "cat", "/home/jovyan/work/report.ipynb"))["cells"][0]["id"] == "c1"
