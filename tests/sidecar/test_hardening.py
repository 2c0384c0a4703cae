"""Tier 2: data plane hardening (issue 20) against the real binary and a real
ipykernel: nothing escapes the workspace, guarantee 6 holds whatever way a
notebook hides, outputs are never cut silently, every answer is bounded."""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time

import psutil
import requests

from harness import BIN, KERNEL_CMD, Sidecar, free_port

NAME = "a" * 64 + ".png"


def notebook_referencing(name: str) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{
        "cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1, "source": "plot()",
        "outputs": [{"output_type": "display_data", "metadata": {},
                     "data": {"text/markdown": f"![image/png](assets/{name})", "text/plain": "<Figure>"}}]}]}


def put_asset(s: Sidecar, name: str = NAME, data: bytes = b"\x89PNG fake") -> None:
    (s.workspace / "assets").mkdir(exist_ok=True)
    (s.workspace / "assets" / name).write_bytes(data)


# -- 1. nothing escapes the workspace ---------------------------------------

def test_an_asset_symlink_never_serves_the_file_it_points_to(shared_sidecar):
    s = shared_sidecar
    secret = s.data_dir / "kernel.json"
    assert b'"key"' in secret.read_bytes(), "the connection file holds the HMAC key"
    name = "b" * 64 + ".json"
    (s.workspace / "assets").mkdir(exist_ok=True)
    link = s.workspace / "assets" / name
    link.symlink_to(secret)
    try:
        r = s.http.get(f"{s.url}/v1/assets/{name}", timeout=10)
        assert r.status_code in (403, 404), r.text
        assert b"key" not in r.content
        assert r.json()["error"]["code"] in ("not_served", "not_found")
        assert name not in [a["name"] for a in s.http.get(s.url + "/v1/assets").json()["assets"]]
        # A link to a directory on the way is refused too.
        outside = s.root / "outside"
        outside.mkdir(exist_ok=True)
        (outside / ("c" * 64 + ".txt")).write_text("outside")
        assets = s.workspace / "assets"
        moved = s.workspace / "assets.real"
        assets.rename(moved)
        assets.symlink_to(outside)
        try:
            r = s.http.get(f"{s.url}/v1/assets/{'c' * 64}.txt", timeout=10)
            assert r.status_code in (403, 404) and b"outside" not in r.content, r.text
        finally:
            assets.unlink()
            moved.rename(assets)
        # Delete refuses to touch a link (and the target survives).
        r = s.http.delete(f"{s.url}/v1/assets/{name}", timeout=10)
        assert r.status_code in (403, 404), r.text
        assert secret.exists() and link.is_symlink()
    finally:
        link.unlink()


def test_a_fifo_named_as_an_asset_answers_at_once(shared_sidecar):
    s = shared_sidecar
    name = "d" * 64 + ".txt"
    (s.workspace / "assets").mkdir(exist_ok=True)
    fifo = s.workspace / "assets" / name
    os.mkfifo(fifo)
    try:
        t0 = time.monotonic()
        for _ in range(3):
            r = s.http.get(f"{s.url}/v1/assets/{name}", timeout=10)
            assert r.status_code in (403, 404), r.text
        assert time.monotonic() - t0 < 5, "a FIFO must not hang the request"
        assert s.http.get(s.url + "/v1/status", timeout=5).status_code == 200
    finally:
        fifo.unlink()


# -- 2. guarantee 6: a referenced asset is never deleted --------------------

def hide_ways(ws, name):
    """Each way a notebook referencing `name` can sit in the workspace, and
    the status a delete must get (409 referenced or 409 unsure)."""
    nb = json.dumps(notebook_referencing(name))
    deep = ws.joinpath(*[f"d{i}" for i in range(24)])
    return [
        ("deeper than 16 folders", deep / "deep.ipynb", nb.encode(), "in_use"),
        ("not UTF-8 (latin-1 in a cell)", ws / "latin1.ipynb",
         nb.replace('"plot()"', '"caf\u00e9()"').encode("latin-1"), "in_use"),
        ("UTF-16 with a BOM", ws / "utf16.ipynb", nb.encode("utf-16"), "in_use"),
        ("UTF-16LE without a BOM", ws / "utf16le.ipynb", nb.encode("utf-16-le"), "in_use"),
        ("in a hidden folder", ws / ".hidden" / "h.ipynb", nb.encode(), "in_use"),
        ("slash escaped in JSON", ws / "escaped.ipynb", nb.replace("/", "\\/").encode(), "in_use"),
    ]


def test_guarantee_6_every_way_a_notebook_can_hide_keeps_the_asset(sidecar):
    s = sidecar
    for label, path, data, code in hide_ways(s.workspace, NAME):
        put_asset(s)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        r = s.http.delete(f"{s.url}/v1/assets/{NAME}", timeout=30)
        assert r.status_code == 409, f"{label}: {r.status_code} {r.text}"
        assert r.json()["error"]["code"] == code, f"{label}: {r.text}"
        assert (s.workspace / "assets" / NAME).exists(), label
        path.unlink()
    # With every hiding place gone, the delete goes through: the refusals were real.
    r = s.http.delete(f"{s.url}/v1/assets/{NAME}", timeout=30)
    assert r.status_code == 200, r.text
    assert not (s.workspace / "assets" / NAME).exists()


def test_guarantee_6_a_notebook_the_sidecar_cannot_read_makes_it_unsure(sidecar):
    s = sidecar
    put_asset(s)
    outside = s.root / "elsewhere.ipynb"
    outside.write_text(json.dumps(notebook_referencing(NAME)))
    link = s.workspace / "linked.ipynb"
    link.symlink_to(outside)
    r = s.http.delete(f"{s.url}/v1/assets/{NAME}", timeout=30)
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"]["code"] == "unsure" and "linked.ipynb" in body["error"]["message"], body
    assert body["unsure"], body
    assert (s.workspace / "assets" / NAME).exists()
    # The index reports it instead of skipping it silently.
    deadline = time.monotonic() + 10
    while True:
        problems = s.http.get(s.url + "/v1/assets").json()["index_problems"]
        if any(p["notebook"] == "linked.ipynb" for p in problems):
            break
        assert time.monotonic() < deadline, problems
        time.sleep(0.1)
    link.unlink()
    assert s.http.delete(f"{s.url}/v1/assets/{NAME}", timeout=30).status_code == 200


# -- 3. outputs are never cut silently ---------------------------------------

PRINT_100MB = "import sys\nchunk = 'x' * 1_000_000\nfor _ in range(100):\n    sys.stdout.write(chunk)\nsys.stdout.flush()"
TOTAL = 100_000_000


def stored_bytes(e: dict) -> int:
    return sum(len(o["text"]) for o in e["outputs"]
               if o["output_type"] == "stream" and o["name"] == "stdout")


LAGGING_KERNEL = [sys.executable, os.path.join(os.path.dirname(__file__), "lagging_kernel.py"),
                  "-f", "{connection_file}", "--lag", "4"]


def test_output_that_lags_the_reply_is_not_cut(tmp_path):
    """The real cause of the 100 MB cut: a timer finished the execution 2 s
    after the execute_reply while the kernel's output was still in flight.
    This kernel replies at once and sends the rest of its output and its idle
    status 4 s later."""
    s = Sidecar(tmp_path)
    s.kernel_cmd = LAGGING_KERNEL
    s.start()
    try:
        for _ in range(2):
            e = s.run("x = 1", timeout=60)
            assert e["state"] == "completed", e
            text = "".join(o.get("text", "") for o in e["outputs"])
            assert text == "early\nlate output of 'x = 1'\n", e["outputs"]
            assert e.get("truncated") is None
    finally:
        s.close()


def test_a_100mb_cell_five_times_is_kept_whole_or_says_how_much(tmp_path):
    """Default limit (32 MiB): each run keeps exactly the limit and says so."""
    s = Sidecar(tmp_path).start()
    try:
        for run in range(5):
            e = s.run(PRINT_100MB, timeout=300)
            assert e["state"] == "completed", e.get("error")
            got = stored_bytes(e)
            t = e.get("truncated")
            if got == TOTAL:
                assert t is None, t
                continue
            assert t, f"run {run}: {got} of {TOTAL} bytes stored with no word about it"
            assert t["reason"] == "max_output_bytes", t
            assert t["kept_bytes"] == got == t["limit_bytes"] == 32 << 20, (got, t)
            assert t["kept_bytes"] + t["dropped_bytes"] == TOTAL, t
            note = e["outputs"][-1]
            assert note["name"] == "stderr" and "output truncated" in note["text"], note
        metrics = requests.get(s.url + "/metrics", timeout=10).text
        assert "notebook_outputs_truncated_total 5" in metrics, metrics
    finally:
        s.close()


def test_a_100mb_cell_under_a_higher_limit_is_stored_whole(tmp_path):
    s = Sidecar(tmp_path, "--max-output-bytes", str(128 << 20)).start()
    try:
        for run in range(2):
            e = s.run(PRINT_100MB, timeout=300)
            assert e["state"] == "completed", e.get("error")
            assert stored_bytes(e) == TOTAL, (run, stored_bytes(e), e.get("truncated"))
            assert e.get("truncated") is None
    finally:
        s.close()


# -- 4. every answer is bounded ------------------------------------------------

def test_listing_1000_executions_of_1mib_code_stays_under_256mib(tmp_path):
    s = Sidecar(tmp_path).start()
    try:
        # The kernel is busy, so the thousand stay queued with their code.
        blocker = s.submit("import time; time.sleep(600)")
        code = "#" + "x" * ((1 << 20) - 1)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            def one(i):
                with requests.Session() as h:
                    h.headers["Authorization"] = f"Bearer {s.token}"
                    r = h.post(s.url + "/v1/executions", json={"code": code, "key": f"k{i}"}, timeout=60)
                    assert r.status_code == 202, r.text
            list(pool.map(one, range(1000)))
        proc = psutil.Process(s.proc.pid)
        peak = 0
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        seen, cursor, pages = 0, None, 0
        try:
            while pages < 50:
                params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                r = s.http.get(s.url + "/v1/executions", params=params, timeout=60)
                assert r.status_code == 200, r.text
                assert len(r.content) <= 256 << 10, len(r.content)
                page = r.json()
                seen += len(page["executions"])
                for e in page["executions"]:
                    assert len(e["code"]) <= 200 and "outputs" in e
                    if e["id"] != blocker["id"]:
                        assert e["code_bytes"] == 1 << 20
                pages += 1
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        finally:
            stop.set()
            sampler.join()
        assert seen == 1001, seen
        print(f"[hardening] listed {seen} executions of 1 MiB code in {pages} pages, sidecar peak RSS {peak >> 20} MiB")
        assert peak < 256 << 20, f"peak RSS {peak >> 20} MiB"
        s.http.post(f"{s.url}/v1/executions/{blocker['id']}/cancel", timeout=30)
    finally:
        s.proc.kill()
        s.proc.wait()
        s.kill_kernel()


def test_the_list_limit_and_cursor_are_checked(shared_sidecar):
    s = shared_sidecar
    for params, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "x"}, "limit"),
                          ({"cursor": "nope"}, "cursor"), ({"state": "done"}, "state")):
        r = s.http.get(s.url + "/v1/executions", params=params, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (params, r.text)
    ids = [s.submit(f"{i}")["id"] for i in range(3)]
    r = s.http.get(s.url + "/v1/executions", params={"limit": 2}, timeout=10).json()
    assert [e["id"] for e in r["executions"]] == ids[::-1][:2] and r["next_cursor"]
    r2 = s.http.get(s.url + "/v1/executions", params={"limit": 2, "cursor": r["next_cursor"]}, timeout=10).json()
    assert r2["executions"][0]["id"] == ids[0]


# -- the weaker spots ----------------------------------------------------------

def test_a_connection_that_never_finishes_its_headers_is_closed(shared_sidecar):
    s = shared_sidecar
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    try:
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # no end of headers
        t0 = time.monotonic()
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        waited = time.monotonic() - t0
    finally:
        sock.close()
    assert 5 < waited < 20, f"closed after {waited:.1f} s"
    # And an idle keep-alive connection is let go too; a live one keeps working.
    assert s.http.get(s.url + "/v1/status", timeout=5).status_code == 200


def test_error_bodies_are_json_and_name_the_limit(shared_sidecar):
    s = shared_sidecar
    r = s.http.post(s.url + "/v1/executions", data=b"{" + b" " * (8 << 20) + b"}",
                    headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text
    # The unread rest of the body spoils the connection: the answer says so,
    # or the client would reuse it and find it closed (a flake seen in CI).
    assert r.headers.get("connection", "").lower() == "close", r.headers
    err = r.json()["error"]
    assert err["code"] == "too_large" and "limit" in err["message"] and any(c.isdigit() for c in err["message"])
    for method, path in (("GET", "/v1/nope"), ("DELETE", "/v1/status")):
        r = s.http.request(method, s.url + path, timeout=10)
        assert r.status_code in (404, 405), r.text
        assert r.headers["content-type"].startswith("application/json"), r.headers
        assert "error" in r.json()


def test_the_bearer_scheme_is_case_insensitive(shared_sidecar):
    s = shared_sidecar
    for scheme in ("bearer", "BEARER", "BeArEr"):
        r = requests.get(s.url + "/v1/status", headers={"Authorization": f"{scheme} {s.token}"}, timeout=10)
        assert r.status_code == 200, (scheme, r.text)
    r = requests.get(s.url + "/v1/status", headers={"Authorization": f"Basic {s.token}"}, timeout=10)
    assert r.status_code == 401


def test_a_reused_key_with_other_code_says_so(shared_sidecar):
    s = shared_sidecar
    first = s.submit("40 + 2", key="reuse-1")
    again = s.http.post(s.url + "/v1/executions", json={"code": "1 / 0", "key": "reuse-1"}, timeout=10)
    assert again.status_code == 200
    body = again.json()
    assert body["id"] == first["id"] and body["replayed"] is True and body["code_differs"] is True
    same = s.http.post(s.url + "/v1/executions", json={"code": "40 + 2", "key": "reuse-1"}, timeout=10).json()
    assert same["replayed"] is True and same["code_differs"] is False


def test_notebook_and_cell_id_are_checked_like_notebook_paths(shared_sidecar):
    s = shared_sidecar
    bad = [({"notebook": "../x.ipynb", "cell_id": "c1"}, "notebook"),
           ({"notebook": "/etc/x.ipynb"}, "notebook"),
           ({"notebook": "x.txt"}, "notebook"),
           ({"notebook": "a" * 5000 + ".ipynb"}, "notebook"),
           ({"notebook": "x.ipynb", "cell_id": "has space"}, "cell_id"),
           ({"notebook": "x.ipynb", "cell_id": "c" * 65}, "cell_id"),
           ({"cell_id": "c1"}, "cell_id")]
    before = len(s.http.get(s.url + "/v1/executions", params={"limit": 1000}).json()["executions"])
    for fields, field in bad:
        r = s.http.post(s.url + "/v1/executions", json={"code": "1", **fields}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (fields, r.text)
    after = len(s.http.get(s.url + "/v1/executions", params={"limit": 1000}).json()["executions"])
    assert after == before, "bad input loses nothing and adds nothing"


def test_local_on_a_taken_port_starts_no_kernel(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        p = subprocess.run([str(BIN), "local", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
                            "--workspace", str(tmp_path / "ws"), "--token", "t", "--kernel-cmd", *KERNEL_CMD],
                           capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in p.stderr + p.stdout, p.stderr
    assert not (data / "kernel.pid").exists(), "no kernel was started"
    left = [q for q in psutil.process_iter(["cmdline"]) if str(data) in " ".join(q.info["cmdline"] or [])]
    assert not left, left
    assert free_port()  # the machine still has ports
