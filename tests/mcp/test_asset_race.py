"""Guarantee 6, the sidecar's half, as a race: saving a notebook whose outputs
reference an asset (run_cell writing its outputs) against deleting that
asset. Over 50 rounds, never a notebook on disk that references a deleted
asset: the notebook write and the delete take the same workspace lock, and
the write refuses a reference to an asset that is gone."""
import json
import random
import re
import threading

from mcpclient import run_mcp

ROUNDS = 50


def payload_code(i: int) -> str:
    # ~330 KB of image bytes (base64 > the 256 KiB threshold), the same bytes each run of the cell.
    return ("import base64, hashlib\nfrom IPython.display import display\n"
            f"p = b'\\x89PNG\\r\\n\\x1a\\n' + hashlib.sha256(b'round-{i}').digest() * 10000\n"
            "display({'image/png': base64.b64encode(p).decode(), 'text/plain': 'img'}, raw=True)")


def test_save_racing_delete_never_leaves_a_dangling_reference(mcp_sidecar):
    s = mcp_sidecar
    path = "race/race.ipynb"
    rng = random.Random(6)

    async def setup(session):
        r = await session.call_tool("create_notebook", {"path": path})
        assert not r.is_error
        ids = []
        for i in range(ROUNDS):
            r = await session.call_tool("insert_cell", {"path": path, "source": payload_code(i)})
            ids.append(r.structured_content["cell_id"])
        return ids

    cell_ids = run_mcp(s, setup)
    outcomes = {"deleted": 0, "kept": 0}
    for i, cell in enumerate(cell_ids):
        first = s.run(payload_code(i))
        meta = next(o for o in first["outputs"] if o["output_type"] == "display_data")["metadata"]
        name = meta["notebook.dev/assets"][0]["path"].split("/", 1)[1]
        barrier = threading.Barrier(2)
        delay = rng.uniform(0, 0.3)
        result = {}

        def delete():
            barrier.wait()
            threading.Event().wait(delay)
            result["delete"] = s.http.delete(f"{s.url}/v1/assets/{name}", timeout=30).status_code

        t = threading.Thread(target=delete)
        t.start()
        barrier.wait()
        run_mcp(s, lambda session: session.call_tool("run_cell", {"path": path, "cell_id": cell, "timeout_s": 30}))
        t.join(timeout=60)
        assert result["delete"] in (200, 409, 404), result
        outcomes["deleted" if result["delete"] == 200 else "kept"] += 1
        # The invariant, read from disk.
        text = (s.workspace / path).read_text()
        for ref in set(re.findall(r"assets/([0-9a-f]{64}\.[a-z0-9]+)", text)):
            assert (s.workspace / "assets" / ref).exists(), f"round {i}: notebook references deleted {ref}"
        json.loads(text)
    print(f"race outcomes over {ROUNDS} rounds: {outcomes}")
