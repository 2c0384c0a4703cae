"""Tier 2: the durable queue (guarantees 1, 2 and 3) against a real ipykernel."""
import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests

from harness import Sidecar, check_exactly_once, text_of

HERE = os.path.dirname(__file__)


def all_executions(s: Sidecar) -> list:
    r = s.http.get(s.url + "/v1/executions", params={"limit": 1000}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["executions"]


def wait_all_final(s: Sidecar, timeout: float = 120) -> list:
    deadline = time.monotonic() + timeout
    while True:
        execs = all_executions(s)
        pending = [e for e in execs if e["state"] in ("queued", "running")]
        if not pending:
            return execs
        assert time.monotonic() < deadline, f"{len(pending)} executions never finished"
        s.get(pending[-1]["id"], wait=min(10, max(0.1, deadline - time.monotonic())))


def crash_run(tmp_path, kill_kernel_too: bool, kills: int = 5, n: int = 150):
    s = Sidecar(tmp_path).start()
    acked_path = tmp_path / "acked.jsonl"
    sub = subprocess.Popen([sys.executable, os.path.join(HERE, "submitter.py"), s.url, s.token, str(n),
                            str(s.workspace), str(acked_path)])
    rng = random.Random(1234 + kills + int(kill_kernel_too))
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 1.2))
            kernel_pid = s.kernel_pid()
            s.kill9()
            if kill_kernel_too:
                try:
                    os.kill(kernel_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            s.start()
        assert sub.wait(timeout=300) == 0, "the submitter failed"
        execs = wait_all_final(s)
    finally:
        if sub.poll() is None:
            sub.kill()
        s.stop()
        try:
            os.kill(s.kernel_pid(), signal.SIGKILL)
        except (OSError, ValueError):
            pass

    acked = [json.loads(line) for line in acked_path.read_text().splitlines()]
    ran = collections.Counter((s.workspace / "keys.txt").read_text().split())
    completed, interrupted = check_exactly_once(acked, execs, ran, n, kills)
    return len(completed), len(interrupted)


def test_guarantee_1_and_2_kill9_under_load_loses_nothing_acknowledged_and_runs_nothing_twice(tmp_path):
    completed, interrupted = crash_run(tmp_path, kill_kernel_too=False)
    print(f"completed={completed} interrupted={interrupted}")


def test_kill9_sidecar_and_kernel_queued_work_runs_on_the_new_kernel(tmp_path):
    completed, interrupted = crash_run(tmp_path, kill_kernel_too=True)
    print(f"completed={completed} interrupted={interrupted}")


def test_idempotency_key_survives_restart(sidecar):
    s = sidecar
    first = s.submit("1+1", key="once")
    again = s.http.post(s.url + "/v1/executions", json={"code": "2+2", "key": "once"})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    s.wait_final(first["id"])
    s.stop()
    s.start()
    r = s.http.post(s.url + "/v1/executions", json={"code": "3+3", "key": "once"})
    assert r.status_code == 200 and r.json()["id"] == first["id"]
    assert r.json()["state"] == "completed"
    assert text_of(r.json()) == "2"


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def test_guarantee_3_nothing_polls_fifty_long_pollers_behind_a_20s_cell(sidecar):
    s = sidecar
    blocker = s.submit("import time; time.sleep(20)")["id"]
    waiting = [s.submit(f"{i}")["id"] for i in range(50)]
    results = {}

    def poll(eid):
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {s.token}"
        results[eid] = http.get(f"{s.url}/v1/executions/{eid}", params={"wait": 60}, timeout=90).json()

    threads = [threading.Thread(target=poll, args=(e,)) for e in waiting]
    for t in threads:
        t.start()
    time.sleep(1)  # let all 50 requests arrive and park
    c0, t0 = cpu_seconds(s.proc.pid), time.monotonic()
    e = s.wait_final(blocker, timeout=60)
    c1, t1 = cpu_seconds(s.proc.pid), time.monotonic()
    for t in threads:
        t.join(timeout=60)
    assert e["state"] == "completed"
    share = (c1 - c0) / (t1 - t0)
    print(f"sidecar CPU while 50 clients long-poll: {share * 100:.3f}% of a core over {t1 - t0:.1f}s")
    assert share < 0.01
    assert all(results[i]["state"] == "completed" for i in waiting)


def test_guarantee_3_an_idle_sidecar_uses_no_cpu(shared_sidecar):
    s = shared_sidecar
    s.run("1")
    c0, t0 = cpu_seconds(s.proc.pid), time.monotonic()
    time.sleep(5)
    share = (cpu_seconds(s.proc.pid) - c0) / (time.monotonic() - t0)
    print(f"idle sidecar CPU: {share * 100:.3f}% of a core")
    assert share < 0.005


def test_timeout_interrupts_and_fails_with_reason_timeout(shared_sidecar):
    s = shared_sidecar
    t0 = time.monotonic()
    e = s.run("import time; time.sleep(30)", timeout_s=1)
    assert e["state"] == "failed", e
    assert e["reason"] == "timeout"
    assert time.monotonic() - t0 < 6
    assert s.run("'after'")["state"] == "completed"


def test_kernel_that_ignores_interrupts_is_restarted_after_timeout(tmp_path):
    s = Sidecar(tmp_path, "--interrupt-grace-s", "1").start()
    try:
        code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
        e = s.run(code, timeout_s=1, timeout=30)
        assert e["state"] == "failed" and e["reason"] == "timeout", e
        assert s.run("'moved on'", timeout=60)["state"] == "completed"
        assert s.kernel()["restarts"] >= 1
    finally:
        s.stop()


def test_cancel_queued_and_running(shared_sidecar):
    s = shared_sidecar
    running = s.submit("import time; time.sleep(30)")["id"]
    queued = s.submit("'never'")["id"]
    r = s.http.post(f"{s.url}/v1/executions/{queued}/cancel", timeout=10)
    assert r.status_code == 200 and r.json()["result"] == "cancelled"
    assert s.get(queued)["state"] == "cancelled"
    with s.http.get(s.url + "/v1/events", params={"execution": running, "since": 0}, stream=True, timeout=30) as r:
        for line in r.iter_lines():
            if b'"started"' in line:
                break
    r = s.http.post(f"{s.url}/v1/executions/{running}/cancel", timeout=10)
    assert r.status_code == 200 and r.json()["result"] == "interrupting"
    e = s.wait_final(running, timeout=10)
    assert e["state"] == "cancelled", e
    assert s.http.post(f"{s.url}/v1/executions/nope/cancel", timeout=10).status_code == 404


def test_sigterm_finishes_the_running_cell_and_keeps_the_queue(tmp_path):
    s = Sidecar(tmp_path, "--shutdown-grace-s", "10").start()
    try:
        running = s.submit("import time; time.sleep(2); 'finished in grace'")["id"]
        queued = s.submit("'runs after restart'")["id"]
        with s.http.get(s.url + "/v1/events", params={"execution": running, "since": 0}, stream=True, timeout=30) as r:
            for line in r.iter_lines():
                if b'"started"' in line:
                    break
        s.proc.send_signal(signal.SIGTERM)
        # A request that raced the signal may still be accepted (and is then
        # durable); within the grace every new one is refused with 503.
        accepted = []
        for _ in range(100):
            r = s.http.post(s.url + "/v1/executions", json={"code": "'raced the signal'"}, timeout=10)
            if r.status_code == 503:
                break
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
            time.sleep(0.01)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "shutting_down"
        assert s.proc.wait(timeout=30) == 0
        s.start()
        for eid in accepted:
            assert s.wait_final(eid, timeout=60)["state"] == "completed"
        e = s.get(running)
        assert e["state"] == "completed" and text_of(e) == "'finished in grace'", e
        e = s.wait_final(queued, timeout=60)
        assert e["state"] == "completed", e
    finally:
        s.stop()


def test_sigterm_past_the_grace_interrupts_the_running_cell(tmp_path):
    s = Sidecar(tmp_path, "--shutdown-grace-s", "1").start()
    try:
        running = s.submit("import time; time.sleep(100)")["id"]
        with s.http.get(s.url + "/v1/events", params={"execution": running, "since": 0}, stream=True, timeout=30) as r:
            for line in r.iter_lines():
                if b'"started"' in line:
                    break
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 8
        s.start()
        e = s.get(running)
        assert e["state"] == "failed" and e["reason"] == "interrupted", e
    finally:
        s.stop()


def test_readyz_and_status(shared_sidecar):
    s = shared_sidecar
    assert requests.get(s.url + "/readyz").status_code == 200
    st = s.http.get(s.url + "/v1/status").json()
    assert st["ready"] is True
    assert st["kernel"]["state"] in ("idle", "busy")
    assert set(st["queue"]) == {"queued", "running", "completed", "failed", "cancelled"}


def test_a_restarted_sidecar_follows_the_cell_its_predecessor_left_running(tmp_path):
    """Guarantee 2's other half: a cell the kernel still runs when the
    sidecar is killed is followed by the next sidecar (never re-sent), and
    completes with what it printed after the restart."""
    sc = Sidecar(tmp_path).start()
    try:
        e = sc.submit("import time; time.sleep(3); print('finished after the restart')")
        deadline = time.monotonic() + 30
        while sc.get(e["id"])["state"] != "running":
            assert time.monotonic() < deadline, sc.get(e["id"])
            time.sleep(0.02)
        sc.kill9()
        sc.start()
        final = sc.wait_final(e["id"], timeout=60)
        assert final["state"] == "completed", final
        assert "finished after the restart" in text_of(final)
        assert sc.run("1+1")["state"] == "completed"
    finally:
        sc.close()
