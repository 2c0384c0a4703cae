"""Tier 2, issue 18: an execution submitted over HTTP with `notebook` and
`cell_id` writes its outputs and execution count into that cell when it
finishes, as MCP's run_cell does (one write-back, in the sidecar), whether or
not the client that submitted it still waits."""
import time

import nbformat
import requests


def write_notebook(sidecar, name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print('hello')\n6 * 7", id="answer"),
        nbformat.v4.new_markdown_cell("untouched", id="words"),
        nbformat.v4.new_code_cell("'other'", id="other"),
    ]
    nbformat.write(nb, sidecar.workspace / name)
    return nb


def read_cell(sidecar, name: str, cell_id: str) -> nbformat.NotebookNode:
    nb = nbformat.read(sidecar.workspace / name, as_version=4)
    nbformat.validate(nb)
    return next(c for c in nb.cells if c.get("id") == cell_id)


def wait_written(sidecar, name: str, cell_id: str, timeout: float = 30) -> nbformat.NotebookNode:
    """The cell once it has an execution count: the write-back runs in the
    sidecar after the final state, so a reader polls the file."""
    deadline = time.monotonic() + timeout
    while True:
        cell = read_cell(sidecar, name, cell_id)
        if cell.get("execution_count") is not None:
            return cell
        assert time.monotonic() < deadline, f"cell {cell_id} of {name} never written: {cell}"
        time.sleep(0.05)


def test_an_http_submission_for_a_cell_writes_its_outputs_into_the_notebook(sidecar):
    write_notebook(sidecar, "nb.ipynb")
    e = sidecar.run("print('hello')\n6 * 7", notebook="nb.ipynb", cell_id="answer")
    assert e["state"] == "completed", e
    cell = wait_written(sidecar, "nb.ipynb", "answer")
    assert cell.execution_count == e["execution_count"], (cell, e)
    kinds = [o["output_type"] for o in cell.outputs]
    assert kinds == ["stream", "execute_result"], cell.outputs
    assert cell.outputs[0]["text"] == "hello\n"
    assert cell.outputs[1]["data"]["text/plain"] == "42"
    assert cell.outputs[1]["execution_count"] == e["execution_count"]
    assert read_cell(sidecar, "nb.ipynb", "other").outputs == [], "only the named cell is written"
    assert read_cell(sidecar, "nb.ipynb", "words").source == "untouched"


def test_a_failed_cell_writes_its_error_into_the_notebook(sidecar):
    write_notebook(sidecar, "err.ipynb")
    e = sidecar.run("1 / 0", notebook="err.ipynb", cell_id="other")
    assert e["state"] == "failed", e
    cell = wait_written(sidecar, "err.ipynb", "other")
    assert [o["output_type"] for o in cell.outputs] == ["error"], cell.outputs
    assert cell.outputs[0]["ename"] == "ZeroDivisionError"


def test_the_write_back_happens_after_the_client_went_away(sidecar):
    write_notebook(sidecar, "away.ipynb")
    client = requests.Session()
    client.headers["Authorization"] = f"Bearer {sidecar.token}"
    r = client.post(sidecar.url + "/v1/executions", timeout=30,
                    json={"code": "import time; time.sleep(1.5); 'late'", "notebook": "away.ipynb",
                          "cell_id": "other"})
    assert r.status_code == 202, r.text
    eid = r.json()["id"]
    # The client long-polls, gives up mid-wait and disconnects.
    try:
        client.get(f"{sidecar.url}/v1/executions/{eid}", params={"wait": 30}, timeout=0.3)
    except requests.exceptions.ReadTimeout:
        pass
    client.close()
    cell = wait_written(sidecar, "away.ipynb", "other")
    assert cell.outputs[0]["data"]["text/plain"] == "'late'", cell.outputs
    assert sidecar.get(eid)["state"] == "completed"


def test_a_replayed_key_does_not_write_the_cell_again(sidecar):
    write_notebook(sidecar, "key.ipynb")
    first = sidecar.run("'once'", key="k-1", notebook="key.ipynb", cell_id="answer")
    assert first["state"] == "completed", first
    wait_written(sidecar, "key.ipynb", "answer")
    # The user clears the cell; the replay of the key is the first execution, not a new write.
    nb = nbformat.read(sidecar.workspace / "key.ipynb", as_version=4)
    nb.cells[0].outputs, nb.cells[0].execution_count = [], None
    nbformat.write(nb, sidecar.workspace / "key.ipynb")
    again = sidecar.submit("'once'", key="k-1", notebook="key.ipynb", cell_id="answer")
    assert again["id"] == first["id"] and again.get("replayed") is True, again
    # A write-back would follow at once (the execution is final); give it time to show.
    time.sleep(1.0)
    assert read_cell(sidecar, "key.ipynb", "answer").execution_count is None
