"""Helpers for the benchmarks: start the release binary in local mode."""
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import harness  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
harness.BIN = pathlib.Path(os.environ.get("NBO_BIN", ROOT / "target" / "release" / "notebook-operator"))


def start_sidecar(*extra, env=None):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="nbo-bench-"))
    s = harness.Sidecar(tmp, *extra)
    if env:
        s.popen_kw = {"env": {**os.environ, **env}}
    return s.start()


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
