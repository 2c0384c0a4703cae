"""End-to-end event latency (kernel -> SSE client), p50/p99, with 1, 100 and
1000 SSE clients on loopback. The kernel prints time.time() every 10 ms; each
client subtracts it from its clock on arrival. Clients are asyncio sockets in
one Python process, so at 1000 clients part of the figure is the client's own
parsing.

    $(.ci/python-env)/bin/python bench/events.py
"""
import asyncio
import json
import threading
import time

from jupyter_client import BlockingKernelClient

from common import pct, start_sidecar

PRINTS = 200


async def client(port, token, since, eid_fut, lat, ready):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write((f"GET /v1/events?since={since} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    await w.drain()
    await r.readuntil(b"\r\n\r\n")
    ready.release()
    buf = b""
    while True:
        line = await r.readline()
        if not line:
            return
        if not line.startswith(b"data:"):
            continue
        now = time.time()
        ev = json.loads(line[5:])
        if ev.get("type") == "output" and ev["output"].get("output_type") == "stream":
            for ts in ev["output"]["text"].split():
                lat.append(now - float(ts))
        if ev.get("type") == "finished" and ev.get("execution_id") == (eid_fut.result() if eid_fut.done() else None):
            w.close()
            return


def raw_iopub(s, stop, lat):
    """The reference: the same kernel's iopub read straight over ZeroMQ."""
    kc = BlockingKernelClient(connection_file=str(s.data_dir / "kernel.json"))
    kc.load_connection_file()
    kc.start_channels(shell=False, stdin=False, hb=False, control=False)
    try:
        while not stop.is_set():
            try:
                m = kc.get_iopub_msg(timeout=0.2)
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
            now = time.time()
            if m["msg_type"] == "stream":
                lat.extend(now - float(ts) for ts in m["content"]["text"].split())
    finally:
        kc.stop_channels()


async def round_(s, n):
    since = s.http.get(s.url + "/v1/status").json()["events"]["newest_seq"]
    lat = []
    ready = asyncio.Semaphore(0)
    eid_fut = asyncio.get_running_loop().create_future()
    tasks = [asyncio.create_task(client(s.port, s.token, since, eid_fut, lat, ready)) for _ in range(n)]
    for _ in range(n):
        await ready.acquire()
    code = f"import time\nfor i in range({PRINTS}):\n    print(time.time(), flush=True)\n    time.sleep(0.01)"
    e = await asyncio.to_thread(s.submit, code)
    eid_fut.set_result(e["id"])
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    return lat


def main():
    s = start_sidecar("--client-queue", "4096")
    try:
        print(f"event latency kernel print -> SSE client, {PRINTS} prints every 10 ms")
        raw, stop = [], threading.Event()
        t = threading.Thread(target=raw_iopub, args=(s, stop, raw))
        t.start()
        time.sleep(1)
        lat = asyncio.run(round_(s, 1))
        stop.set()
        t.join()
        print(f"  raw iopub (jupyter_client, same kernel, same run): p50 {pct(raw, 50) * 1000:7.2f} ms  "
              f"p99 {pct(raw, 99) * 1000:7.2f} ms  ({len(raw)} samples)")
        print(f"      1 clients: p50 {pct(lat, 50) * 1000:7.2f} ms  p99 {pct(lat, 99) * 1000:7.2f} ms  "
              f"({len(lat)} samples)  ratio p50 {pct(lat, 50) / pct(raw, 50):.2f}x")
        for n in (100, 1000):
            lat = asyncio.run(round_(s, n))
            print(f"  {n:>5} clients: p50 {pct(lat, 50) * 1000:7.2f} ms  p99 {pct(lat, 99) * 1000:7.2f} ms  ({len(lat)} samples)")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
