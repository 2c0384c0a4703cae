"""End-to-end event latency (kernel -> SSE client), p50/p99, with 1, 100 and
1000 SSE clients on loopback. The kernel prints time.time() every 10 ms; each
client subtracts it from its clock on arrival. Clients are asyncio sockets in
one Python process, so at 1000 clients part of the figure is the client's own
parsing.

    $(.ci/python-env)/bin/python bench/events.py
"""
import asyncio
import json
import time

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
        for n in (1, 100, 1000):
            lat = asyncio.run(round_(s, n))
            print(f"  {n:>5} clients: p50 {pct(lat, 50) * 1000:7.2f} ms  p99 {pct(lat, 99) * 1000:7.2f} ms  ({len(lat)} samples)")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
