"""A separate process that submits keyed executions, retrying through sidecar
crashes with the same key, and records each acknowledged key (fsync'd)."""
import json
import os
import sys
import time

import requests

url, token, n, ws, acked_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
http = requests.Session()
http.headers["Authorization"] = f"Bearer {token}"
deadline = time.monotonic() + 240
with open(acked_path, "a") as acked:
    for i in range(n):
        key = f"k{i}"
        code = f"with open({os.path.join(ws, 'keys.txt')!r}, 'a') as f:\n    f.write({key + chr(10)!r})\nimport time; time.sleep(0.01)"
        while True:
            if time.monotonic() > deadline:
                sys.exit(f"gave up at {key}")
            try:
                r = http.post(url + "/v1/executions", json={"code": code, "key": key}, timeout=5)
            except requests.RequestException:
                time.sleep(0.05)  # the sidecar is down: retry the same key
                continue
            if r.status_code in (200, 202):
                acked.write(json.dumps({"key": key, "id": r.json()["id"]}) + "\n")
                acked.flush()
                os.fsync(acked.fileno())
                break
            time.sleep(0.05)
