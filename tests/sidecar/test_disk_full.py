"""Tier 2: an unwritable database answers 503, half-writes nothing, and the
sidecar keeps serving reads. The file-size limit (RLIMIT_FSIZE) of the running
sidecar stands in for a full disk: SQLite's writes past it fail with EFBIG."""
import resource
import signal

import psutil

from harness import Sidecar, text_of


def test_disk_full_is_503_and_reads_keep_working(tmp_path):
    # SIGXFSZ would kill the process at the limit; a full disk does not, so ignore it
    # (an ignored signal stays ignored across exec).
    s = Sidecar(tmp_path)
    s.popen_kw = {"restore_signals": False}
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        s.start()
    finally:
        signal.signal(signal.SIGXFSZ, old)
    try:
        done = s.run("'written before the disk filled'")
        proc = psutil.Process(s.proc.pid)
        sizes = [p.stat().st_size for p in s.data_dir.glob("sidecar.db*")]
        proc.rlimit(resource.RLIMIT_FSIZE, (max(sizes) + 4096, resource.RLIM_INFINITY))
        before = len(s.http.get(s.url + "/v1/executions", params={"limit": 1000}).json()["executions"])
        r = s.http.post(s.url + "/v1/executions", json={"code": "#" * 300_000, "key": "big"}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "storage_unavailable"
        # Reads still work and nothing was half-written.
        assert text_of(s.get(done["id"])) == "'written before the disk filled'"
        after = s.http.get(s.url + "/v1/executions", params={"limit": 1000}).json()["executions"]
        assert len(after) == before
        # Space comes back: the same key is accepted as new.
        proc.rlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        r = s.http.post(s.url + "/v1/executions", json={"code": "'ok again'", "key": "big"}, timeout=30)
        assert r.status_code == 202, r.text
        assert text_of(s.wait_final(r.json()["id"])) == "'ok again'"
    finally:
        s.stop()
