"""Tier 3: `execute` as an MCP task (SEP-2663, io.modelcontextprotocol/tasks).

The Python SDK 2.3.0 has the task types but no client for them, so this
test speaks JSON-RPC over the streamable HTTP transport itself."""
import json
import time

import requests

TASKS = "io.modelcontextprotocol/tasks"


class RawMcp:
    def __init__(self, s, capabilities):
        self.url = f"{s.url}/mcp"
        self.h = {"Authorization": f"Bearer {s.token}", "Content-Type": "application/json",
                  "Accept": "application/json, text/event-stream"}
        self.next_id = 0
        init = self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": capabilities,
                                        "clientInfo": {"name": "raw", "version": "1"}})
        self.init = init["result"]
        self.h["MCP-Protocol-Version"] = self.init["protocolVersion"]
        r = requests.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                          headers=self.h, timeout=10)
        assert r.status_code == 202, r.text

    def call(self, method, params):
        self.next_id += 1
        r = requests.post(self.url, json={"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params},
                          headers=self.h, timeout=60)
        if "mcp-session-id" in r.headers:
            self.h["Mcp-Session-Id"] = r.headers["mcp-session-id"]
        msgs = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
        if r.headers.get("content-type", "").startswith("application/json"):
            msgs = [r.json()]
        return next(m for m in msgs if m.get("id") == self.next_id)

    def close(self):
        requests.delete(self.url, headers=self.h, timeout=10)


def test_execute_becomes_a_task_that_completes_and_cancels(mcp_sidecar):
    c = RawMcp(mcp_sidecar, {"extensions": {TASKS: {}}})
    try:
        assert TASKS in c.init["capabilities"]["extensions"]
        r = c.call("tools/call", {"name": "execute",
                                  "arguments": {"code": "import time\ntime.sleep(2)\nprint('task done')", "timeout_s": 0.3}})
        task = r["result"]
        assert task["resultType"] == "task" and task["status"] == "working", task
        assert task["pollIntervalMs"] > 0 and task["ttlMs"] > 0
        tid = task["taskId"]
        deadline = time.monotonic() + 30
        while True:
            got = c.call("tasks/get", {"taskId": tid})["result"]
            if got["status"] != "working" or time.monotonic() > deadline:
                break
            time.sleep(got["pollIntervalMs"] / 1000)
        assert got["status"] == "completed", got
        assert [b["text"] for b in got["result"]["content"]][1] == "task done\n"
        assert got["result"]["isError"] is False
        # The task is the execution: the HTTP API knows it by the same id.
        assert mcp_sidecar.get(tid)["state"] == "completed"

        # Cancel: a running task, then a queued one behind it.
        running = c.call("tools/call", {"name": "execute", "arguments": {"code": "import time\ntime.sleep(30)", "timeout_s": 0.2}})
        queued = c.call("tools/call", {"name": "execute", "arguments": {"code": "'never'", "timeout_s": 0}})
        assert queued["result"]["resultType"] == "task"
        assert c.call("tasks/cancel", {"taskId": queued["result"]["taskId"]})["result"] is not None
        assert c.call("tasks/get", {"taskId": queued["result"]["taskId"]})["result"]["status"] == "cancelled"
        c.call("tasks/cancel", {"taskId": running["result"]["taskId"]})
        assert mcp_sidecar.wait_final(running["result"]["taskId"], timeout=30)["state"] == "cancelled"

        err = c.call("tasks/get", {"taskId": "no-such-task"})
        assert err["error"]["code"] == -32602 and "no task no-such-task" in err["error"]["message"]

        # Finished within timeout_s: a plain result, no task.
        r = c.call("tools/call", {"name": "execute", "arguments": {"code": "6*7"}})
        assert r["result"]["content"][1]["text"] == "42"
    finally:
        c.close()


def test_a_client_without_tasks_gets_the_id_in_the_result(mcp_sidecar):
    c = RawMcp(mcp_sidecar, {})
    try:
        r = c.call("tools/call", {"name": "execute", "arguments": {"code": "import time; time.sleep(1)", "timeout_s": 0.2}})
        res = r["result"]
        assert res.get("resultType", "complete") == "complete" and res["isError"] is False
        assert res["structuredContent"]["state"] in ("queued", "running")
        assert mcp_sidecar.wait_final(res["structuredContent"]["id"], timeout=30)["state"] == "completed"
    finally:
        c.close()
