"""A Jupyter kernel channels WebSocket client for the tests: messages built
by jupyter_client's own Session, framed by Jupyter Server's own
serializers (legacy JSON and the v1 subprotocol), carried by
websocket-client. What the tests assert is what a Jupyter frontend sees."""
from __future__ import annotations

import json
import time

import websocket
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (deserialize_binary_message, deserialize_msg_from_ws_v1,
                                                              serialize_msg_to_ws_v1)

V1 = "v1.kernel.websocket.jupyter.org"


def _json_default(o):
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(type(o))


class JupyterWs:
    def __init__(self, url: str, token: str, session_id: str | None = None, v1: bool = False, timeout: float = 30,
                 scheme: str = "Bearer"):
        self.session = Session(session=session_id) if session_id else Session()
        self.v1 = v1
        q = f"?session_id={self.session.session}" if session_id else ""
        self.ws = websocket.create_connection(url + q, header=[f"Authorization: {scheme} {token}"],
                                              subprotocols=[V1] if v1 else None, timeout=timeout)
        self.protocol = self.ws.getsubprotocol()
        self.seen: list[dict] = []

    def close(self):
        self.ws.close()

    # -- sending -----------------------------------------------------------------
    def send(self, channel: str, msg_type: str, content: dict, metadata: dict | None = None) -> dict:
        msg = self.session.msg(msg_type, content, metadata=metadata or {})
        self.send_msg(channel, msg)
        return msg

    def send_msg(self, channel: str, msg: dict):
        if self.v1:
            parts = [json.dumps(msg[k], default=_json_default).encode()
                     for k in ("header", "parent_header", "metadata", "content")]
            self.ws.send_binary(serialize_msg_to_ws_v1(parts, channel))
        else:
            wire = {k: msg[k] for k in ("header", "parent_header", "metadata", "content")}
            wire["channel"] = channel
            self.ws.send(json.dumps(wire, default=_json_default))

    def execute(self, code: str, **content) -> dict:
        c = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
             "allow_stdin": False, "stop_on_error": True}
        c.update(content)
        return self.send("shell", "execute_request", c)

    # -- receiving ---------------------------------------------------------------
    def recv(self, timeout: float = 30) -> dict:
        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionError(f"closed: {data!r}")
        if self.v1:
            assert opcode == websocket.ABNF.OPCODE_BINARY, opcode
            channel, parts = deserialize_msg_from_ws_v1(data)
            header, parent, metadata, content = (json.loads(p) for p in parts[:4])
            msg = {"channel": channel, "header": header, "parent_header": parent,
                   "metadata": metadata, "content": content, "buffers": parts[4:]}
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            msg = deserialize_binary_message(data)
        else:
            msg = json.loads(data)
        self.seen.append(msg)
        return msg

    def until(self, pred, timeout: float = 60) -> list[dict]:
        """Messages up to and including the first that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message in {timeout}s; got {[m['header']['msg_type'] for m in got]}")
            m = self.recv(timeout=left)
            got.append(m)
            if pred(m):
                return got

    def reply_to(self, req: dict, timeout: float = 60) -> tuple[dict, list[dict]]:
        """The shell/control reply to `req`, and every message of `req` until
        it and the kernel's `idle` for it have both come."""
        mid = req["header"]["msg_id"]
        ours = []
        reply = None
        idle = False
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"reply={reply is not None} idle={idle}: {[m['header']['msg_type'] for m in ours]}")
            m = self.recv(timeout=left)
            if m["parent_header"].get("msg_id") != mid:
                continue
            ours.append(m)
            if m["channel"] in ("shell", "control") and m["header"]["msg_type"].endswith("_reply"):
                reply = m
            if m["header"]["msg_type"] == "status" and m["content"].get("execution_state") == "idle":
                idle = True
        return reply, ours


def iopub(msgs: list[dict], msg_type: str) -> list[dict]:
    return [m for m in msgs if m["channel"] == "iopub" and m["header"]["msg_type"] == msg_type]


def stdout(msgs: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in iopub(msgs, "stream") if m["content"]["name"] == "stdout")
