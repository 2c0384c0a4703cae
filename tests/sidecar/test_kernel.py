"""Tier 2: the sidecar against a real ipykernel (issue: kernel + local mode)."""
import base64
import os
import signal
import time

import requests

from harness import Sidecar, text_of

PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_stream_output(shared_sidecar):
    e = shared_sidecar.run("print('hello'); import sys; print('oops', file=sys.stderr)")
    assert e["state"] == "completed"
    streams = {}
    for o in e["outputs"]:
        if o["output_type"] == "stream":  # stdout and stderr may interleave in chunks
            streams[o["name"]] = streams.get(o["name"], "") + o["text"]
    assert streams == {"stdout": "hello\n", "stderr": "oops\n"}


def test_execute_result_keeps_all_mime_types(shared_sidecar):
    e = shared_sidecar.run("1+1")
    assert e["state"] == "completed"
    [out] = e["outputs"]
    assert out["output_type"] == "execute_result"
    assert out["data"]["text/plain"] == "2"
    assert out["execution_count"] == e["execution_count"] > 0
    e = shared_sidecar.run(
        "class R:\n    def _repr_html_(self): return '<b>r</b>'\n    def __repr__(self): return 'R'\nR()")
    assert e["outputs"][0]["data"] == {"text/plain": "R", "text/html": "<b>r</b>"}


def test_display_data_with_png(shared_sidecar):
    code = ("from IPython.display import Image, display\nimport base64\n"
            f"display(Image(data=base64.b64decode('{PNG_1PX}')))")
    e = shared_sidecar.run(code)
    assert e["state"] == "completed", e
    [out] = e["outputs"]
    assert out["output_type"] == "display_data"
    assert base64.b64decode(out["data"]["image/png"]) == base64.b64decode(PNG_1PX)
    assert "text/plain" in out["data"]


def test_error_with_traceback(shared_sidecar):
    e = shared_sidecar.run("def f():\n    return 1/0\nf()")
    assert e["state"] == "failed"
    assert e["reason"] == "error"
    assert e["error"]["ename"] == "ZeroDivisionError"
    assert e["error"]["evalue"] == "division by zero"
    assert any("f()" in line for line in e["error"]["traceback"])
    assert e["outputs"][-1]["output_type"] == "error"


def test_input_does_not_hang_the_queue(shared_sidecar):
    t0 = time.monotonic()
    e = shared_sidecar.run("input('name? ')", timeout=20)
    assert time.monotonic() - t0 < 10
    assert e["state"] == "failed"
    assert e["error"]["ename"] == "StdinNotImplementedError"
    assert shared_sidecar.run("'next'")["state"] == "completed"


def test_sleep_100_is_interrupted_within_2s(shared_sidecar):
    s = shared_sidecar
    eid = s.submit("import time; time.sleep(100)")["id"]
    # Wait (without sleeping) until the kernel runs it: ?wait returns early
    # only for final states, so follow the event stream instead.
    with s.http.get(s.url + "/v1/events", params={"execution": eid, "since": 0}, stream=True, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith(b"data:") and b'"started"' in line:
                break
    t0 = time.monotonic()
    assert s.http.post(s.url + "/v1/kernel/interrupt", timeout=10).status_code == 200
    e = s.wait_final(eid, timeout=10)
    elapsed = time.monotonic() - t0
    assert e["state"] == "failed", e
    assert e["reason"] == "interrupted"
    assert e["error"]["ename"] == "KeyboardInterrupt"
    assert elapsed < 2.0, elapsed


def test_an_interrupt_sent_the_moment_an_execution_starts_is_never_lost(shared_sidecar):
    """`started` comes with the kernel's busy status, before ipykernel can
    take a SIGINT; the sidecar holds the interrupt until the code runs."""
    s = shared_sidecar
    for attempt in range(6):
        eid = s.submit("import time; time.sleep(100)")["id"]
        with s.http.get(s.url + "/v1/events", params={"execution": eid, "since": 0}, stream=True, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith(b"data:") and b'"started"' in line:
                    assert s.http.post(s.url + "/v1/kernel/interrupt", timeout=10).status_code == 200
                    break
        t0 = time.monotonic()
        e = s.wait_final(eid, timeout=10)
        assert (e["state"], e["reason"]) == ("failed", "interrupted"), (attempt, e)
        assert time.monotonic() - t0 < 2.0, attempt


def test_hundred_sequential_executions_keep_their_order(shared_sidecar):
    s = shared_sidecar
    s.run("order = []")
    ids = [s.submit(f"order.append({i})")["id"] for i in range(100)]
    last = s.wait_final(ids[-1], timeout=120)
    assert last["state"] == "completed"
    e = s.run("print(order == list(range(100)), len(order))")
    assert text_of(e) == "True 100\n"
    starts = [s.get(i)["started_at"] for i in ids]
    assert starts == sorted(starts)


def test_restart_forgets_variables(sidecar):
    assert sidecar.run("x = 41; x + 1")["state"] == "completed"
    before = sidecar.kernel()["restarts"]
    r = sidecar.http.post(sidecar.url + "/v1/kernel/restart", timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["restarts"] == before + 1
    e = sidecar.run("x")
    assert e["state"] == "failed"
    assert e["error"]["ename"] == "NameError"


def test_killed_kernel_is_detected_and_recovered(sidecar):
    s = sidecar
    eid = s.submit("import time; time.sleep(60)")["id"]
    with s.http.get(s.url + "/v1/events", params={"execution": eid, "since": 0}, stream=True, timeout=30) as r:
        for line in r.iter_lines():
            if b'"started"' in line:
                break
    old_pid = s.kernel_pid()
    t0 = time.monotonic()
    s.kill_kernel()
    e = s.wait_final(eid, timeout=30)
    assert e["state"] == "failed"
    assert e["reason"] == "kernel_died"
    assert time.monotonic() - t0 < 5.0, "a dead kernel is noticed within 5 s"
    e = s.run("'alive again'", timeout=60)
    assert e["state"] == "completed", e
    assert s.kernel_pid() != old_pid
    assert s.kernel()["restarts"] >= 1


def test_forged_signature_is_dropped_and_counted(shared_sidecar):
    s = shared_sidecar
    before = s.kernel()["dropped_messages"]
    code = (
        "from jupyter_client.session import Session\n"
        "k = get_ipython().kernel\n"
        "forger = Session(key=b'not-the-key', session=k.session.session)\n"
        "forger.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'FORGED'}, parent=k.get_parent('shell'))\n"
        "print('genuine')"
    )
    e = s.run(code)
    assert e["state"] == "completed", e
    assert "FORGED" not in text_of(e)
    assert "genuine" in text_of(e)
    assert s.kernel()["dropped_messages"] == before + 1
    assert s.run("1")["state"] == "completed", "the sidecar keeps serving"


def test_bad_input_is_refused_and_nothing_is_queued(shared_sidecar):
    s = shared_sidecar
    count = len(s.http.get(s.url + "/v1/executions", params={"limit": 1000}).json()["executions"])
    r = requests.post(s.url + "/v1/executions", json={"code": "1"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = requests.post(s.url + "/v1/executions", json={"code": "1"})
    assert r.status_code == 401
    r = s.http.post(s.url + "/v1/executions", data=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    r = s.http.post(s.url + "/v1/executions", json={"kode": "1"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["field"] == "code"
    r = s.http.post(s.url + "/v1/executions", json={"code": "#" * (1024 * 1024 + 1)}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["field"] == "code"
    r = s.http.get(s.url + "/v1/executions", params={"state": "done"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["field"] == "state"
    r = s.http.get(s.url + "/v1/executions/nope", timeout=10)
    assert r.status_code == 404
    after = len(s.http.get(s.url + "/v1/executions", params={"limit": 1000}).json()["executions"])
    assert after == count
    assert requests.get(s.url + "/healthz").status_code == 200
    assert requests.get(s.url + "/metrics").status_code == 200


def test_local_reattaches_to_the_live_kernel_after_sidecar_kill(sidecar):
    s = sidecar
    assert s.run("secret = 'kept-across-sidecar-death'")["state"] == "completed"
    kernel_pid = s.kernel_pid()
    s.kill9()
    os.kill(kernel_pid, 0)  # the kernel survived the sidecar
    s.start()
    assert s.kernel_pid() == kernel_pid, "reattached, not restarted"
    e = s.run("secret")
    assert e["state"] == "completed", e
    assert text_of(e) == "'kept-across-sidecar-death'"
