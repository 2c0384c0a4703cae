"""A Jupyter kernel whose iopub lags its shell replies, for tier 2: it answers
every execute_request at once on shell, while the rest of its output and its
idle status are still in flight: iopub is one ordered stream (as in any
kernel) that stalls LAG seconds before them, as a heavy output does on its way
to a client. Speaks the real protocol with jupyter_client's Session and pyzmq.
    python lagging_kernel.py -f CONNECTION_FILE [--lag SECONDS]"""
import argparse
import json
import queue
import threading
import time

import zmq
from jupyter_client.session import Session

p = argparse.ArgumentParser()
p.add_argument("-f", required=True)
p.add_argument("--lag", type=float, default=4.0)
args = p.parse_args()
cfg = json.load(open(args.f))
ctx = zmq.Context()
url = lambda port: f"{cfg['transport']}://{cfg['ip']}:{cfg[port]}"  # noqa: E731
shell = ctx.socket(zmq.ROUTER); shell.bind(url("shell_port"))  # noqa: E702
control = ctx.socket(zmq.ROUTER); control.bind(url("control_port"))  # noqa: E702
stdin = ctx.socket(zmq.ROUTER); stdin.bind(url("stdin_port"))  # noqa: E702
iopub = ctx.socket(zmq.PUB); iopub.bind(url("iopub_port"))  # noqa: E702
hb = ctx.socket(zmq.REP); hb.bind(url("hb_port"))  # noqa: E702
threading.Thread(target=lambda: zmq.proxy(hb, hb), daemon=True).start()
session = Session(key=cfg["key"].encode(), signature_scheme=cfg.get("signature_scheme", "hmac-sha256"))
outbox: "queue.Queue" = queue.Queue()
count = 0


def sender():
    """iopub in order; an item is not sent before its time, nor is any after it."""
    while True:
        not_before, kind, content, parent = outbox.get()
        time.sleep(max(0.0, not_before - time.monotonic()))
        session.send(iopub, kind, content, parent=parent)


threading.Thread(target=sender, daemon=True).start()


def pub(kind, content, parent, delay=0.0):
    outbox.put((time.monotonic() + delay, kind, content, parent))


poller = zmq.Poller()
for s in (shell, control):
    poller.register(s, zmq.POLLIN)
while True:
    for sock, _ in poller.poll():
        idents, msg = session.feed_identities(sock.recv_multipart())
        msg = session.deserialize(msg)
        kind, parent = msg["header"]["msg_type"], msg["header"]
        if kind == "kernel_info_request":
            pub("status", {"execution_state": "busy"}, parent)
            session.send(sock, "kernel_info_reply", {
                "status": "ok", "protocol_version": "5.3", "implementation": "lagging",
                "implementation_version": "1", "banner": "", "language_info": {"name": "python"}},
                parent=parent, ident=idents)
            pub("status", {"execution_state": "idle"}, parent)
        elif kind == "execute_request":
            count += 1
            pub("status", {"execution_state": "busy"}, parent)
            pub("execute_input", {"code": msg["content"]["code"], "execution_count": count}, parent)
            pub("stream", {"name": "stdout", "text": "early\n"}, parent)
            session.send(sock, "execute_reply", {"status": "ok", "execution_count": count,
                                                 "user_expressions": {}}, parent=parent, ident=idents)
            code = msg["content"]["code"]
            pub("stream", {"name": "stdout", "text": f"late output of {code!r}\n"}, parent, delay=args.lag)
            pub("status", {"execution_state": "idle"}, parent)
        elif kind == "shutdown_request":
            session.send(sock, "shutdown_reply", {"status": "ok", "restart": False}, parent=parent, ident=idents)
            raise SystemExit(0)
        elif kind == "interrupt_request":
            session.send(sock, "interrupt_reply", {"status": "ok"}, parent=parent, ident=idents)
