"""Tier 3: the official MCP Python SDK against the sidecar's /mcp, with a
real ipykernel behind it."""
import base64
import json
import os
import struct
import time
import zlib

import anyio
import nbformat
import pytest
import requests

from mcpclient import mcp_session, run_mcp

TOOLS = {
    "execute", "submit", "get_execution", "list_executions", "cancel_execution", "interrupt_kernel",
    "restart_kernel", "kernel_status", "list_notebooks", "create_notebook", "read_notebook",
    "insert_cell", "edit_cell", "delete_cell", "run_cell", "run_all",
    "list_assets", "read_asset", "pin_asset", "unpin_asset",
}


def tiny_png() -> bytes:
    """A valid 2x1 RGB PNG, made here."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"\x00" + b"\xff\x00\x00" + b"\x00\x00\xff"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def texts(result) -> list:
    return [c.text for c in result.content if c.type == "text"]


def call(s, name, args=None, **kw):
    return run_mcp(s, lambda session: session.call_tool(name, args or {}, **kw))


def test_initialize_and_list_tools(mcp_sidecar):
    async def init_only():
        async with mcp_session(mcp_sidecar) as session:
            return session.init_result, await session.list_tools()

    init, tools = anyio.run(init_only)
    assert init.server_info.name == "notebook-operator"
    assert init.capabilities.tools is not None
    assert init.protocol_version, "a protocol version was negotiated"
    names = {t.name for t in tools.tools}
    assert names == TOOLS
    for t in tools.tools:
        assert t.description and len(t.description) > 20, t.name
        assert t.input_schema["type"] == "object", t.name
    execute = next(t for t in tools.tools if t.name == "execute")
    assert execute.input_schema["required"] == ["code"]
    assert {"code", "timeout_s", "key"} <= set(execute.input_schema["properties"])


def test_typed_tools_publish_output_schemas_their_answers_validate_against(mcp_sidecar):
    """Every tool but read_asset (an image or a text) lists an outputSchema,
    and what a call answers as structured content is valid by it."""
    import jsonschema

    async def go(session):
        listed = await session.list_tools()
        out = {}
        out["submit"] = await session.call_tool("submit", {"code": "1"})
        out["get_execution"] = await session.call_tool(
            "get_execution", {"id": out["submit"].structured_content["id"], "wait_s": 30})
        out["execute"] = await session.call_tool("execute", {"code": "print('x')"})
        out["kernel_status"] = await session.call_tool("kernel_status", {})
        out["list_executions"] = await session.call_tool("list_executions", {"limit": 2})
        out["create_notebook"] = await session.call_tool("create_notebook", {"path": "schemas.ipynb"})
        out["insert_cell"] = await session.call_tool("insert_cell", {"path": "schemas.ipynb", "source": "2"})
        await session.call_tool("insert_cell", {"path": "schemas.ipynb", "source": "# t", "cell_type": "markdown"})
        out["run_all"] = await session.call_tool("run_all", {"path": "schemas.ipynb"})
        out["read_notebook"] = await session.call_tool("read_notebook", {"path": "schemas.ipynb"})
        out["list_notebooks"] = await session.call_tool("list_notebooks", {})
        out["list_assets"] = await session.call_tool("list_assets", {})
        return listed, out

    listed, out = run_mcp(mcp_sidecar, go)
    schemas = {t.name: t.output_schema for t in listed.tools}
    assert {n for n, s in schemas.items() if s is None} == {"read_asset"}
    for name, schema in schemas.items():
        if schema is not None:
            assert schema["type"] == "object", name
            jsonschema.validators.validator_for(schema).check_schema(schema)
    for name, r in out.items():
        assert not r.is_error, (name, texts(r))
        assert r.structured_content == json.loads(texts(r)[0]), name
        validator = jsonschema.validators.validator_for(schemas[name])(schemas[name])
        errors = list(validator.iter_errors(r.structured_content))
        assert not errors, (name, [e.message for e in errors])
    assert set(schemas["submit"]["required"]) == {"id", "state", "created_at"}
    assert schemas["execute"] == schemas["get_execution"] == schemas["run_cell"]


def test_execute_print_and_result(mcp_sidecar):
    r = call(mcp_sidecar, "execute", {"code": "print('hi'); 1+1"})
    assert not r.is_error
    head = json.loads(texts(r)[0])
    assert head["state"] == "completed" and head["execution_count"] >= 1
    assert texts(r)[1:] == ["hi\n", "2"]
    assert r.structured_content["id"] == head["id"]
    # The same execution is a durable record on the HTTP side too.
    assert mcp_sidecar.get(head["id"])["state"] == "completed"


def test_execute_image_result(mcp_sidecar):
    png = tiny_png()
    code = ("import base64\nfrom IPython.display import Image, display\n"
            f"display(Image(data=base64.b64decode('{base64.b64encode(png).decode()}')))")
    r = call(mcp_sidecar, "execute", {"code": code})
    assert not r.is_error, texts(r)
    images = [c for c in r.content if c.type == "image"]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data) == png


def test_execute_large_image_is_a_reference_to_its_asset_file(mcp_sidecar):
    code = ("import base64, os\nfrom IPython.display import Image, display\n"
            "display(Image(data=base64.b64decode(" + repr(base64.b64encode(tiny_png()).decode())
            + ") + os.urandom(1_200_000), format='png'))")
    r = call(mcp_sidecar, "execute", {"code": code})
    assert not [c for c in r.content if c.type == "image"], "over the cap: not inlined"
    ref = [t for t in texts(r) if "not inlined" in t]
    assert len(ref) == 1 and "saved as assets/" in ref[0], texts(r)
    name = ref[0].rsplit("/", 1)[1].rstrip("]")
    got = mcp_sidecar.http.get(f"{mcp_sidecar.url}/v1/assets/{name}", timeout=30)
    assert got.status_code == 200 and got.content.startswith(tiny_png()) and len(got.content) > 1_200_000


def test_execute_error_result(mcp_sidecar):
    r = call(mcp_sidecar, "execute", {"code": "def f():\n    return 1/0\nf()"})
    assert r.is_error
    head = json.loads(texts(r)[0])
    assert head["state"] == "failed"
    tb = texts(r)[1]
    assert tb.startswith("ZeroDivisionError: division by zero")
    assert "Traceback" in tb and "f()" in tb
    assert "\x1b[" not in tb, "no terminal colours in the traceback"


def test_slow_cell_returns_its_id_then_completes_through_get_execution(mcp_sidecar):
    t0 = time.monotonic()
    r = call(mcp_sidecar, "execute", {"code": "import time\ntime.sleep(5)\nprint('done')", "timeout_s": 1})
    assert time.monotonic() - t0 < 4, "returned after about timeout_s"
    assert not r.is_error, "not finished is not an error"
    eid = r.structured_content["id"]
    assert r.structured_content["state"] in ("queued", "running")
    assert any("get_execution" in t for t in texts(r))

    r = call(mcp_sidecar, "get_execution", {"id": eid, "wait_s": 30})
    assert r.structured_content["state"] == "completed"
    assert "done\n" in texts(r)


def test_idempotency_key_returns_the_first_execution(mcp_sidecar):
    a = call(mcp_sidecar, "execute", {"code": "import random; random.random()", "key": "mcp-key-1"})
    b = call(mcp_sidecar, "execute", {"code": "import random; random.random()", "key": "mcp-key-1"})
    assert a.structured_content["id"] == b.structured_content["id"]
    assert texts(a)[1:] == texts(b)[1:]


def test_submit_list_and_cancel(mcp_sidecar):
    async def go(session):
        slow = await session.call_tool("submit", {"code": "import time; time.sleep(3)"})
        queued = await session.call_tool("submit", {"code": "print('never')"})
        listed = await session.call_tool("list_executions", {"state": "queued"})
        cancelled = await session.call_tool("cancel_execution", {"id": queued.structured_content["id"]})
        after = await session.call_tool("get_execution", {"id": queued.structured_content["id"]})
        done = await session.call_tool("get_execution", {"id": slow.structured_content["id"], "wait_s": 30})
        return queued, listed, cancelled, after, done

    queued, listed, cancelled, after, done = run_mcp(mcp_sidecar, go)
    qid = queued.structured_content["id"]
    assert qid in [e["id"] for e in listed.structured_content["executions"]]
    assert cancelled.structured_content == {"id": qid, "result": "cancelled"}
    assert after.structured_content["state"] == "cancelled"
    assert done.structured_content["state"] == "completed"


def test_progress_notifications_while_waiting(mcp_sidecar):
    seen = []

    async def on_progress(progress, total, message):
        seen.append((time.monotonic(), progress, message))

    code = "import time\nfor i in range(8):\n    print('step', i, flush=True)\n    time.sleep(0.15)"
    r = call(mcp_sidecar, "execute", {"code": code}, progress_callback=on_progress)
    assert texts(r)[1].count("step") == 8
    assert len(seen) >= 2, seen
    values = [p for _, p, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values), "progress only increases"
    assert any("step" in (m or "") for _, _, m in seen), "messages carry the latest output line"
    gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:])]
    assert all(g >= 0.2 for g in gaps), f"bounded rate: {gaps}"


def test_kernel_status_and_interrupt(mcp_sidecar):
    r = call(mcp_sidecar, "kernel_status")
    assert r.structured_content["state"] in ("idle", "busy")
    assert r.structured_content["language_info"]["name"] == "python"

    async def go(session):
        slow = await session.call_tool("submit", {"code": "import time\ntime.sleep(30)"})
        eid = slow.structured_content["id"]
        await session.call_tool("get_execution", {"id": eid, "wait_s": 0.5})
        while (await session.call_tool("get_execution", {"id": eid})).structured_content["state"] != "running":
            await anyio.sleep(0.05)
        await session.call_tool("interrupt_kernel", {})
        return await session.call_tool("get_execution", {"id": eid, "wait_s": 20})

    r = run_mcp(mcp_sidecar, go)
    assert r.structured_content["state"] == "failed"
    assert any("KeyboardInterrupt" in t for t in texts(r))


def test_tool_errors_are_clear_and_never_hang(mcp_sidecar):
    ws = mcp_sidecar.workspace
    outside = ws.parent / "outside"
    outside.mkdir(exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(), str(outside / "x.ipynb"))
    if not (ws / "escape").exists():
        os.symlink(outside, ws / "escape")

    async def go(session):
        out = {}
        out["dotdot"] = await session.call_tool("read_notebook", {"path": "../outside/x.ipynb"})
        out["absolute"] = await session.call_tool("create_notebook", {"path": str(outside / "y.ipynb")})
        out["symlink"] = await session.call_tool("read_notebook", {"path": "escape/x.ipynb"})
        out["symlink_create"] = await session.call_tool("create_notebook", {"path": "escape/new.ipynb"})
        out["missing"] = await session.call_tool("read_notebook", {"path": "nope.ipynb"})
        out["not_ipynb"] = await session.call_tool("create_notebook", {"path": "a.txt"})
        await session.call_tool("create_notebook", {"path": "errs.ipynb"})
        out["cell"] = await session.call_tool("edit_cell", {"path": "errs.ipynb", "cell_id": "nope", "source": "x"})
        out["run_cell"] = await session.call_tool("run_cell", {"path": "errs.ipynb", "cell_id": "nope"})
        out["index"] = await session.call_tool("insert_cell", {"path": "errs.ipynb", "source": "x", "index": 5})
        out["exec"] = await session.call_tool("get_execution", {"id": "no-such-id", "wait_s": 5})
        out["cancel"] = await session.call_tool("cancel_execution", {"id": "no-such-id"})
        out["state"] = await session.call_tool("list_executions", {"state": "done"})
        out["timeout"] = await session.call_tool("execute", {"code": "1", "timeout_s": -1})
        out["after"] = await session.call_tool("execute", {"code": "40+2"})
        return out

    t0 = time.monotonic()
    out = run_mcp(mcp_sidecar, go)
    assert time.monotonic() - t0 < 20, "no call hung"
    expect = {
        "dotdot": "`..` is refused", "absolute": "absolute paths are refused", "symlink": "outside the workspace",
        "symlink_create": "outside the workspace", "missing": "no notebook at", "not_ipynb": "must end in .ipynb",
        "cell": 'no cell with id "nope"', "run_cell": 'no cell with id "nope"', "index": "past the end",
        "exec": "no execution no-such-id", "cancel": "no execution no-such-id", "state": "is not one of",
        "timeout": "non-negative",
    }
    for name, needle in expect.items():
        assert out[name].is_error, name
        assert needle in texts(out[name])[0], (name, texts(out[name]))
    assert not (outside / "y.ipynb").exists() and not (outside / "new.ipynb").exists()
    assert texts(out["after"])[1] == "42", "the server still answers"


def test_notebook_built_and_run_cell_by_cell(mcp_sidecar):
    path = "work/built.ipynb"
    png = tiny_png()

    async def go(session):
        created = await session.call_tool("create_notebook", {"path": path})
        assert not created.is_error, texts(created)
        ids = {}
        r = await session.call_tool("insert_cell", {"path": path, "source": "# Built over MCP", "cell_type": "markdown"})
        ids["md"] = r.structured_content["cell_id"]
        r = await session.call_tool("insert_cell", {"path": path, "source": "x = 21\nprint('x is', x)"})
        ids["a"] = r.structured_content["cell_id"]
        r = await session.call_tool("insert_cell", {"path": path, "source": "x * 2"})
        ids["b"] = r.structured_content["cell_id"]
        img = ("import base64\nfrom IPython.display import Image, display\n"
               f"display(Image(data=base64.b64decode('{base64.b64encode(png).decode()}')))")
        r = await session.call_tool("insert_cell", {"path": path, "source": img})
        ids["img"] = r.structured_content["cell_id"]
        r = await session.call_tool("insert_cell", {"path": path, "source": "undefined_name", "after_id": ids["a"]})
        ids["err"] = r.structured_content["cell_id"]
        await session.call_tool("edit_cell", {"path": path, "cell_id": ids["b"], "source": "x * 2 + 0"})
        runs = {}
        for k in ("a", "err", "b", "img"):
            runs[k] = await session.call_tool("run_cell", {"path": path, "cell_id": ids[k]})
        listed = await session.call_tool("list_notebooks", {})
        read = await session.call_tool("read_notebook", {"path": path})
        return ids, runs, listed, read

    ids, runs, listed, read = run_mcp(mcp_sidecar, go)
    assert texts(runs["a"])[1] == "x is 21\n"
    assert runs["err"].is_error and "NameError" in texts(runs["err"])[1]
    assert texts(runs["b"])[1] == "42"
    assert [c.type for c in runs["img"].content][1] == "image"
    assert path in [n["path"] for n in listed.structured_content["notebooks"]]

    nb = nbformat.read(str(mcp_sidecar.workspace / path), as_version=4)
    nbformat.validate(nb)
    assert [c.id for c in nb.cells] == [ids["md"], ids["a"], ids["err"], ids["b"], ids["img"]]
    cells = {c.id: c for c in nb.cells}
    assert cells[ids["a"]].outputs[0]["text"] == "x is 21\n"
    assert cells[ids["err"]].outputs[0]["ename"] == "NameError"
    assert cells[ids["b"]].source == "x * 2 + 0"
    assert cells[ids["b"]].outputs[0]["data"]["text/plain"] == "42"
    assert base64.b64decode(cells[ids["img"]].outputs[0]["data"]["image/png"]) == png
    counts = [cells[ids[k]].execution_count for k in ("a", "err", "b", "img")]
    assert all(isinstance(c, int) for c in counts) and counts == sorted(counts)
    assert "outputs" not in cells[ids["md"]]

    summary = {c["id"]: c for c in read.structured_content["cells"]}
    assert summary[ids["a"]]["outputs"][0]["text"] == "x is 21\n"
    assert summary[ids["img"]]["outputs"][0]["data"][0].startswith("image/png (")
    assert summary[ids["err"]]["outputs"][0] == {"output_type": "error", "ename": "NameError",
                                                 "evalue": "name 'undefined_name' is not defined"}


def test_run_cell_outputs_land_after_the_agent_disconnected(mcp_sidecar):
    path = "detached.ipynb"

    async def go(session):
        await session.call_tool("create_notebook", {"path": path})
        r = await session.call_tool("insert_cell", {"path": path, "source": "import time\ntime.sleep(2)\nprint('late')"})
        cell = r.structured_content["cell_id"]
        r = await session.call_tool("run_cell", {"path": path, "cell_id": cell, "timeout_s": 0.2})
        return cell, r

    cell, r = run_mcp(mcp_sidecar, go)  # the session is closed on return
    assert r.structured_content["state"] in ("queued", "running")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nb = nbformat.read(str(mcp_sidecar.workspace / path), as_version=4)
        if nb.cells[0].outputs:
            break
        time.sleep(0.1)
    nbformat.validate(nb)
    assert nb.cells[0].id == cell
    assert nb.cells[0].outputs[0]["text"] == "late\n"
    assert isinstance(nb.cells[0].execution_count, int)


def test_run_all_and_delete_cell(mcp_sidecar):
    path = "runall.ipynb"

    async def go(session):
        await session.call_tool("create_notebook", {"path": path})
        ids = []
        for src in ["a = 1", "b = a + 1\nb", "# note", "print(a + b)"]:
            kind = "markdown" if src.startswith("#") else "code"
            r = await session.call_tool("insert_cell", {"path": path, "source": src, "cell_type": kind})
            ids.append(r.structured_content["cell_id"])
        r = await session.call_tool("run_all", {"path": path})
        d = await session.call_tool("delete_cell", {"path": path, "cell_id": ids[2]})
        return ids, r, d

    ids, r, d = run_mcp(mcp_sidecar, go)
    assert not r.is_error, texts(r)
    cells = r.structured_content["cells"]
    assert [c["cell_id"] for c in cells] == [ids[0], ids[1], ids[3]]
    assert all(c["state"] == "completed" for c in cells)
    assert not d.is_error
    nb = nbformat.read(str(mcp_sidecar.workspace / path), as_version=4)
    nbformat.validate(nb)
    assert [c.id for c in nb.cells] == [ids[0], ids[1], ids[3]]
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "2"
    assert nb.cells[2].outputs[0]["text"] == "3\n"


def test_wrong_token_is_401_before_any_mcp_processing(mcp_sidecar):
    url = f"{mcp_sidecar.url}/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    hdr = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for auth in [None, "Bearer wrong", "Basic dGVzdA==", f"Bearer {mcp_sidecar.token}x"]:
        h = dict(hdr)
        if auth:
            h["Authorization"] = auth
        for body in [json.dumps(init), "{not json"]:
            r = requests.post(url, data=body, headers=h, timeout=10)
            assert r.status_code == 401, (auth, body, r.status_code, r.text)
            assert r.headers.get("WWW-Authenticate") == "Bearer"
            assert "mcp-session-id" not in {k.lower() for k in r.headers}
            assert "jsonrpc" not in r.text
        assert requests.get(url, headers=h, timeout=10).status_code == 401
        assert requests.delete(url, headers=h, timeout=10).status_code == 401

    with pytest.raises(Exception):
        run_mcp(mcp_sidecar, lambda session: session.list_tools(), token="wrong")


def test_host_and_origin_are_checked(mcp_sidecar):
    url = f"{mcp_sidecar.url}/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
            "Authorization": f"Bearer {mcp_sidecar.token}"}

    def post(**extra):
        return requests.post(url, json=init, headers={**base, **extra}, timeout=10)

    assert post().status_code == 200
    assert post(Host="evil.example").status_code == 403
    assert post(Host=f"evil.example:{mcp_sidecar.port}").status_code == 403
    assert post(Origin="http://evil.example").status_code == 403
    assert post(Origin="https://attacker.localhost.example:443").status_code == 403
    assert post(Origin="http://localhost:6274").status_code == 200
    assert post(Origin=f"http://127.0.0.1:{mcp_sidecar.port}").status_code == 200


def test_allowed_hosts_are_configurable(tmp_path):
    from harness import Sidecar
    s = Sidecar(tmp_path, "--allowed-host", "nb.agents.svc", "--allowed-host", "10.1.2.3").start()
    try:
        url = f"{s.url}/mcp"
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}}
        h = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {s.token}"}
        assert requests.post(url, json=init, headers={**h, "Host": "nb.agents.svc:8888"}, timeout=10).status_code == 200
        assert requests.post(url, json=init, headers={**h, "Host": "10.1.2.3"}, timeout=10).status_code == 200
        assert requests.post(url, json=init, headers={**h, "Host": "localhost"}, timeout=10).status_code == 200
        assert requests.post(url, json=init, headers={**h, "Host": "other.agents.svc"}, timeout=10).status_code == 403
        assert requests.post(url, json=init, headers={**h, "Host": "nb.agents.svc",
                                                      "Origin": "https://nb.agents.svc"}, timeout=10).status_code == 200
    finally:
        s.stop()
        try:
            os.kill(s.kernel_pid(), 9)
        except (OSError, ValueError):
            pass


def test_outputs_of_queued_cells_land_after_a_sidecar_crash(fresh_sidecar):
    """kill -9 of the sidecar while notebook cells are running and queued:
    after the restart they resume, and their outputs still reach the file."""
    s = fresh_sidecar
    path = "crash.ipynb"

    async def build(session):
        await session.call_tool("create_notebook", {"path": path})
        ids = []
        for src in ["import time\ntime.sleep(2)\nprint('slow done')", "print('queued one ran')"]:
            r = await session.call_tool("insert_cell", {"path": path, "source": src})
            ids.append(r.structured_content["cell_id"])
        r = await session.call_tool("run_all", {"path": path, "timeout_s": 0})
        return ids, r

    ids, r = run_mcp(s, build)
    assert [c["state"] for c in r.structured_content["cells"]][1] == "queued"
    s.kill9()
    s.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        nb = nbformat.read(str(s.workspace / path), as_version=4)
        if nb.cells[1].outputs:
            break
        time.sleep(0.1)
    nbformat.validate(nb)
    assert [c.id for c in nb.cells] == ids
    assert nb.cells[1].outputs[0]["text"] == "queued one ran\n"
    assert isinstance(nb.cells[1].execution_count, int)


def test_asset_tools_list_read_pin_unpin(mcp_sidecar):
    s = mcp_sidecar
    code = ("import base64, os\nfrom IPython.display import display\n"
            "p = b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(400_000)\n"
            "display({'image/png': base64.b64encode(p).decode(), 'text/plain': 'big'}, raw=True)")
    e = s.run(code)
    meta = next(o for o in e["outputs"] if o["output_type"] == "display_data")["metadata"]
    name = meta["notebook.dev/assets"][0]["path"].split("/", 1)[1]

    async def go(session):
        listed = await session.call_tool("list_assets", {})
        read = await session.call_tool("read_asset", {"name": name})
        pinned = await session.call_tool("pin_asset", {"name": name})
        bad = await session.call_tool("read_asset", {"name": "../../etc/passwd"})
        return listed, read, pinned, bad

    listed, read, pinned, bad = run_mcp(s, go)
    entry = next(a for a in listed.structured_content["assets"] if a["name"] == name)
    assert entry["size"] == 400_008 and entry["mime"] == "image/png"
    assert read.content[0].type == "image" and base64.b64decode(read.content[0].data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert pinned.structured_content == {"name": name, "pinned": True}
    assert s.http.delete(f"{s.url}/v1/assets/{name}").status_code == 409
    assert bad.is_error and "not an asset name" in texts(bad)[0]
    unpinned = call(s, "unpin_asset", {"name": name})
    assert unpinned.structured_content["pinned"] is False
    assert s.http.delete(f"{s.url}/v1/assets/{name}").status_code == 200


def test_long_stream_shows_head_and_tail_with_what_was_left_out(mcp_sidecar):
    r = call(mcp_sidecar, "execute", {"code": "for i in range(200000): print(i)", "timeout_s": 60})
    text = "".join(texts(r)[1:])
    assert text.startswith("0\n1\n2\n")
    assert text.rstrip().endswith("199999")
    assert "left out; the whole output is in execution" in text
    eid = r.structured_content["id"] if r.structured_content else None
    full = mcp_sidecar.get(eid) if eid else None
    if full:
        assert full["outputs"][0]["text"].count("\n") == 200000, "the record keeps it whole"
