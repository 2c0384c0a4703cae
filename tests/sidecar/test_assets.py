"""Tier 2: large outputs become asset files; an asset is deleted only when no
notebook references it and it is not pinned (the sidecar's half of guarantee 6)."""
import base64
import hashlib
import json
import time

import requests

from harness import Sidecar

BIG_PNG = ("import base64, os\nfrom IPython.display import display\n"
           "payload = b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(1 << 20)\n"
           "display({'image/png': base64.b64encode(payload).decode(), 'text/plain': '<1 MB image>'}, raw=True)\n"
           "print(__import__('hashlib').sha256(payload).hexdigest())")


def notebook_referencing(path: str) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{
        "cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1, "source": "plot()",
        "outputs": [{"output_type": "display_data", "metadata": {},
                     "data": {"text/markdown": f"![image/png]({path})", "text/plain": "<Figure>"}}]}]}


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def test_large_png_becomes_an_asset_and_is_guarded(shared_sidecar):
    s = shared_sidecar
    since = s.http.get(s.url + "/v1/status").json()["events"]["newest_seq"]
    e = s.run(BIG_PNG)
    assert e["state"] == "completed", e
    sha = next(o["text"].strip() for o in e["outputs"] if o["output_type"] == "stream")
    name = f"{sha}.png"
    display = next(o for o in e["outputs"] if o["output_type"] == "display_data")
    assert "image/png" not in display["data"], "the execution carries the stub, not the megabytes"
    assert f"assets/{name}" in display["data"]["text/markdown"]
    assert display["metadata"]["notebook.dev/assets"][0] == {
        "path": f"assets/{name}", "mime": "image/png", "size": (1 << 20) + 8, "sha256": sha}
    assert len(json.dumps(e)) < 10_000
    # The file is content-addressed and complete.
    data = (s.workspace / "assets" / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    # The event stream carries the stub too.
    r = s.http.get(s.url + "/v1/events", params={"since": since, "execution": e["id"]}, stream=True, timeout=30)
    total = 0
    for line in r.iter_lines():
        total += len(line)
        if b'"finished"' in line:
            break
    r.close()
    assert total < 20_000
    # Index and content.
    listed = {a["name"]: a for a in s.http.get(s.url + "/v1/assets").json()["assets"]}
    assert listed[name]["size"] == (1 << 20) + 8
    assert listed[name]["mime"] == "image/png"
    assert listed[name]["referenced_by"] == [] and listed[name]["pinned"] is False
    got = s.http.get(f"{s.url}/v1/assets/{name}")
    assert got.headers["content-type"] == "image/png" and got.content == data

    # A notebook written by another hand references it: the index notices.
    nb = s.workspace / "reports" / "analysis.ipynb"
    nb.parent.mkdir(exist_ok=True)
    nb.write_text(json.dumps(notebook_referencing(f"assets/{name}")))
    wait_for(lambda: {a["name"]: a for a in s.http.get(s.url + "/v1/assets").json()["assets"]}[name][
        "referenced_by"] == ["reports/analysis.ipynb"])
    r = s.http.delete(f"{s.url}/v1/assets/{name}")
    assert r.status_code == 409 and r.json()["referenced_by"] == ["reports/analysis.ipynb"]
    assert (s.workspace / "assets" / name).exists()

    # Unreferenced but pinned: still kept.
    nb.unlink()
    assert s.http.post(f"{s.url}/v1/assets/{name}/pin").status_code == 200
    r = s.http.delete(f"{s.url}/v1/assets/{name}")
    assert r.status_code == 409 and r.json()["pinned"] is True
    assert s.http.delete(f"{s.url}/v1/assets/{name}/pin").status_code == 200

    # Unreferenced and unpinned: deleted.
    r = s.http.delete(f"{s.url}/v1/assets/{name}")
    assert r.status_code == 200, r.text
    assert not (s.workspace / "assets" / name).exists()
    assert s.http.delete(f"{s.url}/v1/assets/{name}").status_code == 404


def test_a_reference_written_just_before_the_delete_wins(shared_sidecar):
    """The delete reads references from disk, not only from the notification-fed index."""
    s = shared_sidecar
    e = s.run(BIG_PNG)
    name = next(o["text"].strip() for o in e["outputs"] if o["output_type"] == "stream") + ".png"
    nb = s.workspace / "just-saved.ipynb"
    nb.write_text(json.dumps(notebook_referencing(f"assets/{name}")))
    r = s.http.delete(f"{s.url}/v1/assets/{name}")  # no wait for the notification
    assert r.status_code == 409
    assert r.json()["referenced_by"] == ["just-saved.ipynb"]
    nb.unlink()


def test_invalid_notebooks_do_not_break_the_index(shared_sidecar):
    s = shared_sidecar
    e = s.run(BIG_PNG)
    name = next(o["text"].strip() for o in e["outputs"] if o["output_type"] == "stream") + ".png"
    broken = s.workspace / "broken.ipynb"
    broken.write_text("{ this is not json, but it mentions assets/" + name)
    (s.workspace / "empty.ipynb").write_text("")
    r = s.http.delete(f"{s.url}/v1/assets/{name}")
    assert r.status_code == 409, "a legible path in an unreadable notebook still counts"
    broken.unlink()
    assert s.http.delete(f"{s.url}/v1/assets/{name}").status_code == 200
    assert s.http.get(s.url + "/v1/assets").status_code == 200


def test_asset_names_are_validated(shared_sidecar):
    s = shared_sidecar
    for bad in ["nope.png", "%2e%2e%2fetc%2fpasswd", "..%2f..%2fx", "a" * 64 + ".PNG"]:
        r = s.http.delete(f"{s.url}/v1/assets/{bad}")
        assert r.status_code == 400, (bad, r.status_code)
        r = s.http.get(f"{s.url}/v1/assets/{bad}")
        assert r.status_code == 400, (bad, r.status_code)
    assert requests.get(f"{s.url}/v1/assets").status_code == 401


def test_small_outputs_stay_inline(shared_sidecar):
    e = shared_sidecar.run("from IPython.display import HTML; HTML('<b>small</b>')")
    assert e["outputs"][0]["data"]["text/html"] == "<b>small</b>"
