"""Tier 3: issue 20 through the official MCP Python SDK: read_asset never
follows a link out of the workspace, and list_executions stays under the
SDK's 1 MiB message limit whatever the executions weigh."""
import json

import requests

from mcpclient import run_mcp


def call(s, name, args=None):
    return run_mcp(s, lambda session: session.call_tool(name, args or {}))


def test_read_asset_refuses_a_link_to_the_connection_file(fresh_sidecar):
    s = fresh_sidecar
    name = "e" * 64 + ".json"
    (s.workspace / "assets").mkdir(exist_ok=True)
    (s.workspace / "assets" / name).symlink_to(s.data_dir / "kernel.json")
    out = call(s, "read_asset", {"name": name})
    assert out.is_error, out
    text = " ".join(c.text for c in out.content if c.type == "text")
    assert "symbolic link" in text and '"key"' not in text, text
    listed = call(s, "list_assets")
    assert name not in json.dumps(listed.structured_content["assets"])


def test_list_executions_of_1000_large_ones_fits_the_sdk(fresh_sidecar):
    s = fresh_sidecar
    blocker = s.submit("import time; time.sleep(600)")
    # 1000 executions of 12 KiB code each: 12 MB of code, the size that
    # once came back as one 12.9 MB event the SDK refused.
    code = "#" + "\u00e9" * 6000
    with requests.Session() as h:
        h.headers["Authorization"] = f"Bearer {s.token}"
        for i in range(1000):
            r = h.post(s.url + "/v1/executions", json={"code": code}, timeout=30)
            assert r.status_code == 202, r.text

    async def pages(session):
        seen, cursor, sizes = 0, None, []
        for _ in range(50):
            args = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            out = await session.call_tool("list_executions", args)
            assert not out.is_error, out
            sizes.append(len(json.dumps(out.structured_content, ensure_ascii=False, separators=(",", ":")).encode()))
            seen += len(out.structured_content["executions"])
            cursor = out.structured_content.get("next_cursor")
            if not cursor:
                return seen, sizes
        raise AssertionError("more than 50 pages")

    seen, sizes = run_mcp(s, pages)
    assert seen == 1001, seen
    assert max(sizes) <= 256 << 10, sizes
    out = call(s, "list_executions", {"limit": 0})
    assert out.is_error and "limit" in out.content[0].text
    s.http.post(f"{s.url}/v1/executions/{blocker['id']}/cancel", timeout=30)
