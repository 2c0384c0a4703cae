#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from real messages,
request bodies and notebooks (the shapes ipykernel, jupyter_client and
JupyterLab produce). Run it again after changing a seed; libFuzzer's own
finds are kept beside the seeds only after `cargo fuzz cmin`."""

import hashlib
import hmac
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = b"fuzz-key"
DELIM = b"<IDS|MSG>"
SEP = b"\xff"
NAME = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def j(v):
    return json.dumps(v, separators=(",", ":")).encode()


def header(msg_type, msg_id="a1b2c3d4e5f60718293a4b5c6d7e8f90", session="0f1e2d3c"):
    return {
        "msg_id": msg_id,
        "session": session,
        "username": "username",
        "date": "2026-12-01T10:00:00.123456Z",
        "msg_type": msg_type,
        "version": "5.3",
    }


PARENT = header("execute_request", msg_id="5e1f7c0d9a8b4c3d2e1f0a9b8c7d6e5f")
MESSAGES = {
    "execute_request": (header("execute_request"), {}, {}, {
        "code": "print('hi'); 1+1", "silent": False, "store_history": True,
        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}),
    "status_busy": (header("status"), PARENT, {}, {"execution_state": "busy"}),
    "stream": (header("stream"), PARENT, {}, {"name": "stdout", "text": "hi\n\u00e9\u4e2d\U0001F600\n"}),
    "execute_result": (header("execute_result"), PARENT, {}, {
        "data": {"text/plain": "2"}, "metadata": {}, "execution_count": 1}),
    "display_png": (header("display_data"), PARENT, {}, {
        "data": {"image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
                 "text/plain": "<Figure size 640x480 with 1 Axes>"},
        "metadata": {"image/png": {"width": 1, "height": 1}}, "transient": {"display_id": "d1"}}),
    "error": (header("error"), PARENT, {}, {
        "ename": "ZeroDivisionError", "evalue": "division by zero",
        "traceback": ["\u001b[0;31m------\u001b[0m", "\u001b[0;31mZeroDivisionError\u001b[0m: division by zero"]}),
    "execute_reply": (header("execute_reply"), PARENT, {"started": "2026-12-01T10:00:00.1Z",
                      "dependencies_met": True, "engine": "e1", "status": "ok"},
                      {"status": "ok", "execution_count": 1, "user_expressions": {}, "payload": []}),
    "kernel_info_reply": (header("kernel_info_reply"), header("kernel_info_request"), {}, {
        "status": "ok", "protocol_version": "5.3", "implementation": "ipython",
        "implementation_version": "8.30.0", "language_info": {
            "name": "python", "version": "3.11.7", "mimetype": "text/x-python",
            "codemirror_mode": {"name": "ipython", "version": 3}, "pygments_lexer": "ipython3",
            "nbconvert_exporter": "python", "file_extension": ".py"},
        "banner": "Python 3.11.7", "help_links": [], "debugger": False}),
    "input_request": (header("input_request"), PARENT, {}, {"prompt": "name? ", "password": False}),
    "numbers": (header("comm_msg"), PARENT, {}, {"data": {
        "f": 0.1, "g": 1e300, "h": -2.5e-308, "i": 18446744073709551615, "n": -9223372036854775808,
        "z": -0.0, "e": 1.7976931348623157e308}, "comm_id": "c1"}),
}


def frames(parts):
    return SEP.join(parts)


def wire_seeds():
    for name, (h, p, m, c) in MESSAGES.items():
        parts = [j(h), j(p), j(m), j(c)]
        sig = hmac.new(KEY, b"".join(parts), hashlib.sha256).hexdigest().encode()
        ids = [b"kernel.0f1e2d3c." + h["msg_type"].encode()] if name != "execute_request" else []
        bufs = [b"\x00\x01\x02binary buffer"] if name == "numbers" else []
        # Signed with the fixed key (mode byte 0: checked).
        write("wire_decode", f"signed_{name}", b"\x00" + frames(ids + [DELIM, sig] + parts + bufs))
        # Unsigned (mode byte 1: empty key, the JSON parsing is reached).
        write("wire_decode", f"unsigned_{name}", b"\x01" + frames(ids + [DELIM, b""] + parts + bufs))
        # The signing target signs for itself: id count, then the parts.
        write("wire_signed", name, bytes([len(ids)]) + frames(ids + parts + bufs))
    write("wire_decode", "uppercase_sig", b"\x00" + frames([DELIM, hmac.new(
        KEY, b"{}{}{}{}", hashlib.sha256).hexdigest().upper().encode(), b"{}", b"{}", b"{}", b"{}"]))
    write("wire_decode", "no_delimiter", b"\x01" + frames([b"topic", b"", b"{}"]))
    write("wire_decode", "too_few", b"\x01" + frames([DELIM, b"", b"{}"]))


def submit_seeds():
    bodies = {
        "minimal": {"code": "1+1"},
        "full": {"code": "import time\ntime.sleep(1)\nprint('done')", "key": "first",
                 "notebook": "work/analysis.ipynb", "cell_id": "a1b2c3d4", "timeout_s": 30},
        "nulls": {"code": "x", "key": None, "notebook": None, "cell_id": None, "timeout_s": None},
        "float_timeout": {"code": "", "timeout_s": 0.25},
        "unicode": {"code": "print('\u00e9\u4e2d\U0001F600')", "key": "k\u00e9y"},
        "bad_types": {"code": 1, "key": 2, "timeout_s": "10"},
        "traversal": {"code": "1", "notebook": "../../etc/passwd.ipynb"},
        "dot_paths": {"code": "1", "notebook": "./a/./b/../c.ipynb"},
        "absolute": {"code": "1", "notebook": "/abs/x.ipynb"},
        "nested_dirs": {"code": "1", "notebook": "a/b/c/d/e/f/g/h.ipynb"},
    }
    for name, b in bodies.items():
        write("http_submit", name, json.dumps(b))
    write("http_submit", "escaped", '{"code":"\\u0031+1","notebook":"a\\u002fb.ipynb","notebook":"x.ipynb"}')
    write("http_submit", "not_object", '["code"]')
    write("http_submit", "big_number", '{"code":"1","timeout_s":1e400}')
    write("http_submit", "nul_in_path", '{"code":"1","notebook":"a\\u0000b.ipynb"}')


def nb(cells, minor=5, **meta):
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
            "language": "python"}, "language_info": {"name": "python", "version": "3.11.7"}, **meta},
            "nbformat": 4, "nbformat_minor": minor}


def notebooks():
    code = {"cell_type": "code", "execution_count": 1, "id": "a1b2c3d4", "metadata": {},
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["hi\n", "there\n"]},
                {"output_type": "execute_result", "data": {"text/plain": ["2"]}, "metadata": {},
                 "execution_count": 1},
                {"output_type": "display_data", "data": {"text/markdown": f"![plot](assets/{NAME}.png)",
                 "image/png": "iVBORw0KGgo="}, "metadata": {}},
                {"output_type": "error", "ename": "ValueError", "evalue": "bad",
                 "traceback": ["\u001b[0;31mValueError\u001b[0m: bad"]},
            ],
            "source": ["x = 1\n", "x + 1"]}
    md = {"cell_type": "markdown", "id": "m-1", "metadata": {}, "source": "# Title\n\nSome *text*."}
    raw = {"cell_type": "raw", "id": "r_1", "metadata": {"format": "text/plain"}, "source": ""}
    old = [{k: v for k, v in c.items() if k != "id"} for c in (md, code)]
    return {
        "v45": nb([md, code, raw]),
        "v44_no_ids": nb(old, minor=4),
        "empty": nb([]),
        "duplicate_ids": nb([dict(md), dict(md, source="again")]),
        "bad_ids": nb([dict(md, id="has space"), dict(raw, id="x" * 65), dict(code, id="")]),
    }


def notebook_seeds():
    for name, n in notebooks().items():
        text = json.dumps(n, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        write("notebook_parse", name, text)
    write("notebook_parse", "not_v4", '{"nbformat": 3, "worksheets": []}')
    write("notebook_parse", "unknown_cell", '{"nbformat": 4, "cells": [{"cell_type": "heading"}]}')
    write("notebook_parse", "minimal", '{"nbformat":4,"cells":[]}')


def asset_seeds():
    n = notebooks()["v45"]
    text = json.dumps(n, indent=1, ensure_ascii=False) + "\n"
    write("asset_refs", "utf8", text)
    write("asset_refs", "utf8_bom", b"\xef\xbb\xbf" + text.encode())
    write("asset_refs", "utf16le_bom", b"\xff\xfe" + text.encode("utf-16-le"))
    write("asset_refs", "utf16be", text.encode("utf-16-be"))
    write("asset_refs", "utf32le", text.encode("utf-32-le"))
    write("asset_refs", "utf32be_bom", b"\x00\x00\xfe\xff" + text.encode("utf-32-be"))
    write("asset_refs", "escaped_slash", text.replace("assets/", "assets\\/"))
    # Not JSON (a half-written save): the path is still legible as text.
    write("asset_refs", "truncated", text[: text.index(NAME) + 80])
    write("asset_refs", "latin1", text.encode("utf-8").replace(b"Some", b"S\xe9me\xff"))


def legacy_binary(msg, buffers):
    parts = [j(msg)] + buffers
    offsets, at = [], 4 * (len(parts) + 1)
    for part in parts:
        offsets.append(at)
        at += len(part)
    return b"".join([len(parts).to_bytes(4, "big")] + [o.to_bytes(4, "big") for o in offsets] + parts)


def v1_binary(channel, h, p, m, c, buffers):
    parts = [channel.encode(), j(h), j(p), j(m), j(c)] + buffers
    offsets, at = [], 8 * (len(parts) + 2)
    offsets.append(at)
    for part in parts:
        at += len(part)
        offsets.append(at)
    return b"".join([len(offsets).to_bytes(8, "little")] + [o.to_bytes(8, "little") for o in offsets] + parts)


def ws_seeds():
    """Mode byte: bit 0 v1 (else legacy), bit 1 binary (else text)."""
    for name, (h, p, m, c) in MESSAGES.items():
        channel = "shell" if name.endswith(("request", "reply")) else "iopub"
        if name == "input_request":
            channel = "stdin"
        legacy = {"header": h, "parent_header": p, "metadata": m, "content": c, "channel": channel}
        write("ws_frame", f"legacy_{name}", b"\x00" + j(legacy))
        bufs = [b"\x00\x01\x02binary buffer"] if name == "numbers" else []
        write("ws_frame", f"v1_{name}", b"\x03" + v1_binary(channel, h, p, m, c, bufs))
        if bufs:
            write("ws_frame", f"legacy_binary_{name}", b"\x02" + legacy_binary(legacy, bufs))
    # What Jupyter Server's gateway client sends: no channel, an epoch date.
    h = dict(header("kernel_info_request"), date=1764583200.123)
    write("ws_frame", "no_channel_epoch_date", b"\x00" + j({"header": h, "parent_header": {}, "metadata": {},
                                                              "content": {}, "msg_id": h["msg_id"]}))


if __name__ == "__main__":
    ws_seeds()
    wire_seeds()
    submit_seeds()
    notebook_seeds()
    asset_seeds()
