"""Tier 2: the event stream (guarantees 4 and 5) against a real ipykernel."""
import json
import threading
import time

import psutil
import requests
import websocket

from harness import Sidecar
from sse import SseClient


def collect_until_finished(s: Sidecar, eid: str, since=0, query_extra="", timeout=60, headers=None):
    q = f"?since={since}{query_extra}" if since is not None else (("?" + query_extra.lstrip("&")) if query_extra else "")
    c = SseClient("127.0.0.1", s.port, s.token, q, headers=headers)
    got = []
    try:
        for ev_id, ev in c.events(timeout=timeout):
            got.append((ev_id, ev))
            if ev.get("type") == "finished" and ev.get("execution_id") == eid:
                break
    finally:
        c.close()
    return got


def assert_increasing_without_holes(events, first=None):
    seqs = [e["seq"] for _, e in events if "seq" in e]
    assert seqs == sorted(set(seqs)), "strictly increasing, none twice"
    expected = first if first is not None else seqs[0]
    for _, e in events:
        if e["type"] == "gap" and "to_seq" in e:
            assert e["from_seq"] == expected, (e, expected)
            expected = e["to_seq"] + 1
        elif "seq" in e:
            assert e["seq"] == expected, f"hole before {e['seq']}"
            expected += 1


def test_guarantee_4_a_late_client_replays_everything_in_order(shared_sidecar):
    s = shared_sidecar
    newest = s.http.get(s.url + "/v1/status").json()["events"]["newest_seq"]
    e = s.run("print('a'); print('b'); 42")
    got = collect_until_finished(s, e["id"], since=newest)
    kinds = [ev["type"] for _, ev in got if ev.get("execution_id") == e["id"]]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished"
    assert "output" in kinds
    assert all(ev_id == ev["seq"] for ev_id, ev in got), "SSE id is the seq"
    assert_increasing_without_holes(got, first=newest + 1)
    # Last-Event-ID works like since.
    again = collect_until_finished(s, e["id"], since=None, headers={"Last-Event-ID": str(newest)})
    assert [ev for _, ev in again] == [ev for _, ev in got]


def test_websocket_carries_the_same_events(shared_sidecar):
    s = shared_sidecar
    newest = s.http.get(s.url + "/v1/status").json()["events"]["newest_seq"]
    e = s.run("print('ws')")
    ws = websocket.create_connection(f"ws://127.0.0.1:{s.port}/v1/events/ws?since={newest}",
                                     header=[f"Authorization: Bearer {s.token}"], timeout=30)
    got = []
    try:
        while True:
            ev = json.loads(ws.recv())
            got.append(ev)
            if ev["type"] == "finished" and ev["execution_id"] == e["id"]:
                break
    finally:
        ws.close()
    sse = collect_until_finished(s, e["id"], since=newest)
    assert got == [ev for _, ev in sse]


def test_execution_filter(shared_sidecar):
    s = shared_sidecar
    newest = s.http.get(s.url + "/v1/status").json()["events"]["newest_seq"]
    a = s.run("print('a')")
    b = s.run("print('b')")
    got = collect_until_finished(s, b["id"], since=newest, query_extra=f"&execution={b['id']}")
    assert {ev["execution_id"] for _, ev in got} == {b["id"]}
    assert a["id"] != b["id"]


def test_bad_since_is_400(shared_sidecar):
    s = shared_sidecar
    assert s.http.get(s.url + "/v1/events", params={"since": "abc"}).status_code == 400
    newest = s.http.get(s.url + "/v1/status").json()["events"]["newest_seq"]
    r = s.http.get(s.url + "/v1/events", params={"since": newest + 1000})
    assert r.status_code == 400 and r.json()["error"]["field"] == "since"
    assert requests.get(s.url + "/v1/events").status_code == 401


def test_guarantee_4_replay_after_restart_says_gap_and_sqlite_has_the_rest(sidecar):
    s = sidecar
    e = s.run("print('before restart')")
    s.stop()
    s.start()
    after = s.run("print('after restart')")
    got = collect_until_finished(s, after["id"], since=0)
    first_id, first = got[0]
    assert first["type"] == "gap", first
    assert first["from_seq"] == 1
    assert e["id"] in first["executions"], "the gap names what to fetch"
    fetched = s.get(e["id"])
    assert fetched["outputs"][0]["text"] == "before restart\n"
    assert_increasing_without_holes(got, first=1)
    assert got[-1][1]["seq"] > first["to_seq"], "sequence numbers continue across restarts"


def test_ring_overflow_announces_a_gap(tmp_path):
    s = Sidecar(tmp_path, "--ring-events", "5").start()
    try:
        e1 = s.run("for i in range(3): print(i, flush=True)")
        e2 = s.run("print('last')")
        got = collect_until_finished(s, e2["id"], since=0)
        assert got[0][1]["type"] == "gap"
        assert e1["id"] in got[0][1]["executions"]
        assert_increasing_without_holes(got, first=1)
    finally:
        s.stop()


def test_guarantee_5_a_stalled_client_slows_only_itself(tmp_path):
    # A 16-event / 1 MiB client queue (defaults 1024 / 16 MiB) so that the
    # 3.2 MB this test prints overflows it; hyper and the socket absorb ~0.5 MB.
    s = Sidecar(tmp_path, "--client-queue", "16", "--client-queue-bytes", str(1 << 20)).start()
    try:
        stalled_client_scenario(s)
    finally:
        s.stop()


def stalled_client_scenario(s: Sidecar):
    proc = psutil.Process(s.proc.pid)
    rss0 = proc.memory_info().rss
    start_seq = s.http.get(s.url + "/v1/status").json()["events"]["newest_seq"]
    stalled = SseClient("127.0.0.1", s.port, s.token, f"?since={start_seq}", rcvbuf=4096)
    finished_at = {}
    cut = []
    errors = []

    def reader(n):
        since = start_seq
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                c = SseClient("127.0.0.1", s.port, s.token, f"?since={since}")
                last = since
                for ev_id, ev in c.events(timeout=60):
                    if "seq" in ev:
                        assert ev["seq"] > last, "strictly increasing"
                        if ev["type"] != "gap":
                            assert ev["seq"] == last + 1, "no holes"
                        last = ev["seq"]
                    if ev["type"] == "gap" and ev.get("reason") == "slow_client":
                        cut.append(n)
                        break  # reconnect with since=last
                    if ev["type"] == "finished" and ev["execution_id"] == eid_box[0]:
                        finished_at[n] = time.monotonic()
                        c.close()
                        return
                c.close()
                since = last
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append(repr(ex))

    eid_box = [None]
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    peak = [rss0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    eid_box[0] = s.submit("for i in range(200000):\n    print(f'line {i:>10}', flush=(i % 100 == 99))")["id"]
    for t in threads:
        t.join(timeout=180)
    stop.set()
    sampler.join()
    e = s.wait_final(eid_box[0], timeout=60)
    assert e["state"] == "completed"
    assert not errors, errors[:3]
    assert len(finished_at) == 100, f"only {len(finished_at)} readers saw the end"
    spread = max(finished_at.values()) - min(finished_at.values())
    metrics = requests.get(s.url + "/metrics").text
    cut_off = [l for l in metrics.splitlines() if l.startswith("notebook_event_clients_cut_off_total")]
    print([l for l in metrics.splitlines() if l.startswith("notebook_events_published")])
    print(f"finished spread across 100 readers: {spread:.3f}s; readers cut off and resumed: {len(cut)}; "
          f"RSS {rss0 >> 20} MiB -> peak {peak[0] >> 20} MiB; {cut_off}")
    assert spread < 1.0
    assert float(cut_off[0].split()[1]) >= 1, "the stalled client was cut off"
    assert peak[0] - rss0 < 256 << 20, "memory stays bounded"
    # The stalled client, when it finally reads, ends with the resync notice.
    tail = list(stalled.events(timeout=30))
    stalled.close()
    assert tail[-1][1]["type"] == "gap" and tail[-1][1]["reason"] == "slow_client"
    # All 200,000 lines are in the record, in order.
    text = "".join(o["text"] for o in e["outputs"] if o["output_type"] == "stream")
    assert text == "".join(f"line {i:>10}\n" for i in range(200000))


def test_a_client_leaving_counts_as_activity(shared_sidecar):
    """Idle time counts from when the last client left, not from when it came."""
    s = shared_sidecar
    c = SseClient("127.0.0.1", s.port, s.token, "")
    c._headers(10)  # the subscription exists once the response headers arrive
    joined = s.http.get(s.url + "/v1/status").json()["last_activity"]
    time.sleep(1.1)  # a client that stays connected for a while
    c.close()
    deadline = time.monotonic() + 10
    while s.http.get(s.url + "/v1/status").json()["last_activity"] == joined:
        assert time.monotonic() < deadline, "leaving was not recorded as activity"
        time.sleep(0.02)
    left = s.http.get(s.url + "/v1/status").json()["last_activity"]
    assert left > joined
