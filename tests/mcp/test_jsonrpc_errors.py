"""Tier 3: a body on /mcp that is not one MCP message gets the JSON-RPC error
an MCP client expects (JSON-RPC 2.0 section 5.1), as `application/json`:
not JSON is 400 with -32700 Parse error, a batch (removed from MCP in
2025-06-18) and JSON that is not a JSON-RPC 2.0 message are 400 with -32600
Invalid Request (the request's id echoed when it has one), a body over the
limit is 413 with -32600. Before this, rmcp answered all of these with a
plain-text 415. Valid messages still work, in and out of a session.
"""
import json

import pytest
import requests

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "tier3-jsonrpc", "version": "0"}}}

# (what, body, HTTP status, JSON-RPC code, id in the answer)
MALFORMED = [
    ("not json", b"this is not json", 400, -32700, None),
    ("truncated json", b'{"jsonrpc": "2.0", "id": 1, "method": "ping"', 400, -32700, None),
    ("empty body", b"", 400, -32700, None),
    ("invalid utf-8", b'{"jsonrpc": "2.0", "id": 1, "method": "\xff"}', 400, -32700, None),
    ("batch", json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "ping"},
                          {"jsonrpc": "2.0", "id": 2, "method": "ping"}]).encode(), 400, -32600, None),
    ("empty batch", b"[]", 400, -32600, None),
    ("a number", b"42", 400, -32600, None),
    ("no jsonrpc", json.dumps({"id": 7, "method": "ping"}).encode(), 400, -32600, 7),
    ("jsonrpc 1.0", json.dumps({"jsonrpc": "1.0", "id": "s", "method": "ping"}).encode(), 400, -32600, "s"),
    ("neither method nor result", json.dumps({"jsonrpc": "2.0", "id": 8}).encode(), 400, -32600, 8),
    ("method not a string", json.dumps({"jsonrpc": "2.0", "id": 9, "method": 3}).encode(), 400, -32600, 9),
    ("id an object", json.dumps({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}).encode(), 400, -32600, None),
    ("params an array", json.dumps({"jsonrpc": "2.0", "id": 10, "method": "ping", "params": [1]}).encode(),
     400, -32600, 10),
]


def post(sidecar, body: bytes, headers=None, token=None):
    h = {**HEADERS, "Authorization": f"Bearer {token or sidecar.token}", **(headers or {})}
    return requests.post(sidecar.url + "/mcp", data=body, headers=h, timeout=30)


def check_error(r, status, code, id_, what):
    assert r.status_code == status, (what, r.status_code, r.headers, r.text[:500])
    assert r.headers.get("content-type", "").split(";")[0].strip() == "application/json", (what, r.headers)
    msg = r.json()
    assert msg["jsonrpc"] == "2.0" and msg["id"] == id_, (what, msg)
    assert msg["error"]["code"] == code and msg["error"]["message"], (what, msg)
    return msg


@pytest.mark.parametrize("what,body,status,code,id_", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_body_gets_a_json_rpc_error(mcp_sidecar, what, body, status, code, id_):
    msg = check_error(post(mcp_sidecar, body), status, code, id_, what)
    if what == "batch":
        assert "batch" in msg["error"]["message"].lower(), msg
    if code == -32700:
        assert msg["error"]["message"].startswith("Parse error"), msg


def test_inside_a_session_too_and_the_session_goes_on(mcp_sidecar):
    """A client's malformed message mid-session is answered the same way,
    and the session still serves the next valid request."""
    r = post(mcp_sidecar, json.dumps(INITIALIZE).encode())
    assert r.status_code == 200, (r.status_code, r.text)
    sid = r.headers["mcp-session-id"]
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
    r = post(mcp_sidecar, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(), h)
    assert r.status_code == 202, (r.status_code, r.text)
    for what, body, status, code, id_ in MALFORMED:
        check_error(post(mcp_sidecar, body, h), status, code, id_, what)
    r = post(mcp_sidecar, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode(), h)
    assert r.status_code == 200, (r.status_code, r.text)
    assert '"tools"' in r.text and '"execute"' in r.text, r.text[:500]


def test_a_body_over_the_limit_is_413_as_json_and_not_read(mcp_sidecar):
    # Larger than the sidecar's MCP body limit (6 x max code size + 1 MiB; 7 MiB by default).
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * (8 << 20) + b'"}}'
    r = post(mcp_sidecar, big)
    check_error(r, 413, -32600, None, "too large")
    assert "bytes" in r.json()["error"]["message"], r.text


def test_no_token_is_still_401_before_the_body_is_looked_at(mcp_sidecar):
    r = post(mcp_sidecar, b"not json", token="wrong-token")
    assert r.status_code == 401, (r.status_code, r.text)


def test_another_media_type_is_still_the_transports_415(mcp_sidecar):
    r = post(mcp_sidecar, b"not json", {"Content-Type": "text/plain"})
    assert r.status_code == 415, (r.status_code, r.text)
