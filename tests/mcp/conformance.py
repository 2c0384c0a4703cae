"""The official MCP conformance suite (@modelcontextprotocol/conformance from
npm, run with npx) against an /mcp that needs a bearer token, for tier 3 (the
sidecar) and tier 4 (the gateway).

The suite has no way to send a token, so it reaches /mcp through a loopback
proxy that adds the header and changes nothing else. The scenarios in
`must_pass` must pass; the rest are listed, with reasons, in an expected-
failures file (the suite fails on an unlisted failure and on a listed
scenario that passes)."""
import json
import pathlib
import subprocess

from authproxy import AuthProxy

HERE = pathlib.Path(__file__).resolve().parent
MUST_PASS = ["server-initialize", "ping", "tools-list", "server-sse-multiple-streams", "dns-rebinding-protection"]


def install() -> str:
    """The directory the suite is installed in (npm, cached by conformance-env)."""
    out = subprocess.run([str(HERE / "conformance-env")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"installing the conformance suite failed:\n{out.stderr[-3000:]}"
    return out.stdout.strip()


def run_suite(suite_dir: str, port: int, token: str, expected: pathlib.Path, results: pathlib.Path,
              must_pass=MUST_PASS) -> str:
    """Runs the suite against 127.0.0.1:`port`/mcp with `token`; asserts it
    passed with exactly the expected failures and that every scenario of
    `must_pass` ran without a failed check. Returns the suite's summary."""
    proxy = AuthProxy(port, token).start()
    try:
        run = subprocess.run(
            ["npx", "--no-install", "conformance", "server", "--url", f"http://localhost:{proxy.port}/mcp",
             "--expected-failures", str(expected), "-o", str(results)],
            cwd=suite_dir, capture_output=True, text=True, timeout=600)
    finally:
        proxy.stop()
    summary = run.stdout[run.stdout.find("=== SUMMARY"):]
    assert run.returncode == 0, f"conformance suite failed:\n{summary}\n{run.stderr[-3000:]}"
    for name in must_pass:
        dirs = sorted(results.glob(f"server-{name}-*"))
        assert dirs, f"scenario {name} did not run:\n{summary}"
        checks = json.loads((dirs[-1] / "checks.json").read_text())
        failed = [c for c in checks if c["status"] == "FAILURE"]
        assert checks and not failed, (name, failed)
    return summary
