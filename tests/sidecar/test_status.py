"""Tier 2: `GET /v1/status?revision=R&wait_s=S`, the long poll through which
the operator learns that a session's queue or kernel changed."""
import threading
import time


def status(sc, **params) -> dict:
    r = sc.http.get(sc.url + "/v1/status", params=params, timeout=float(params.get("wait_s", 0)) + 30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_status_long_poll_answers_when_an_execution_is_queued_and_when_it_finishes(shared_sidecar):
    sc = shared_sidecar
    before = status(sc)
    assert before["revision"], before
    answers = []

    def poll():
        answers.append((status(sc, revision=before["revision"], wait_s=30), time.monotonic()))

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)  # give the poll time to be asked; that it waited is asserted below
    submitted_at = time.monotonic()
    e = sc.run("1+1")
    waiter.join(35)
    assert not waiter.is_alive() and answers, "the poll answered"
    (changed, answered_at) = answers[0]
    assert changed["revision"] != before["revision"]
    # It held the poll until the submit, and answered soon after it, far
    # before its 30 s limit.
    assert answered_at >= submitted_at, "the poll answered before anything changed"
    assert answered_at - submitted_at < 10
    assert e["state"] == "completed"
    after = status(sc)
    assert after["queue"]["completed"] == before["queue"]["completed"] + 1


def test_the_status_long_poll_waits_while_nothing_changes_and_then_answers_as_it_is(shared_sidecar):
    sc = shared_sidecar
    now = status(sc)
    t0 = time.monotonic()
    same = status(sc, revision=now["revision"], wait_s=1.5)
    took = time.monotonic() - t0
    assert same["revision"] == now["revision"]
    assert 1.4 <= took < 10, took
    # A revision that is not the current one is answered at once.
    t0 = time.monotonic()
    status(sc, revision="not-a-revision", wait_s=30)
    assert time.monotonic() - t0 < 5


def test_a_bad_wait_is_refused_with_the_field_named(shared_sidecar):
    sc = shared_sidecar
    for bad in ["soon", "-1", "nan"]:  # a wait over the limit is capped, as everywhere
        r = sc.http.get(sc.url + "/v1/status", params={"revision": "x", "wait_s": bad}, timeout=10)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["field"] == "wait_s", r.text
