"""Tier 4: standard Jupyter clients on NotebookSessions through the
gateway's Jupyter kernel API (`/api/kernels`, `/api/sessions`,
`/api/kernels/{id}/channels`).

The clients are the real ones, pinned in tests/requirements.txt and
tests/cluster/jlab/package-lock.json: Jupyter Server started with
`--gateway-url` (what JupyterLab runs on), nbclient (what papermill runs
on) with Jupyter Server's GatewayKernelManager, and @jupyterlab/services
(the kernel client of JupyterLab and VS Code) under Node. Each kernel is a
NotebookSession the operator runs on the stand-in kubelet's real ipykernel.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import pathlib
import secrets
import statistics
import subprocess
import sys
import threading
import time

import nbformat
import pytest
import requests

from conftest import ROOT
from harness import free_port
from jupyter_ws import JupyterWs, iopub, stdout
from kube import path
from sessions import SidecarApi
from test_gateway import Agent, call, ok, percentile, texts

PY = sys.executable
# Where the browser test leaves its screenshot.
ARTIFACTS = pathlib.Path(os.environ.get("NBO_ARTIFACTS", "/tmp/nbo-artifacts"))
# A 1x1 PNG.
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def session_of_kernel(kube, ns, kernel_id: str) -> dict:
    found = [s for s in kube.list(path("NotebookSession", ns)) if s["metadata"]["uid"] == kernel_id]
    assert len(found) == 1, (kernel_id, [s["metadata"]["uid"] for s in kube.list(path("NotebookSession", ns))])
    return found[0]


def wait_no_sessions(kube, ns, timeout=90):
    deadline = time.monotonic() + timeout
    while kube.list(path("NotebookSession", ns)):
        assert time.monotonic() < deadline, [s["metadata"]["name"] for s in kube.list(path("NotebookSession", ns))]
        time.sleep(0.2)


def wait_answering(http: requests.Session, url: str, proc: subprocess.Popen, timeout: float, log: pathlib.Path):
    """Until `url` answers 200 to `http`; fails at once, with the end of `log`, if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{proc.args[:3]} exited {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
        try:
            if http.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} never answered:\n{log.read_text(errors='replace')[-4000:]}"
        time.sleep(0.1)


class JupyterServer:
    """A real Jupyter Server whose kernels are the gateway's (`--gateway-url`),
    authenticating to it with an agent's ServiceAccount token."""

    def __init__(self, root: pathlib.Path, gateway_url: str, agent_token: str, app: str = "jupyter_server"):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [PY, "-m", app, "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                     "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                     "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}",
                     f"--gateway-url={gateway_url}", "--GatewayClient.request_timeout=200",
                     "--GatewayClient.connect_timeout=60"]
        self.env = {**os.environ, "JUPYTER_GATEWAY_AUTH_TOKEN": agent_token, "KERNEL_LAUNCH_TIMEOUT": "180",
                    "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"
        self.proc = None

    def start(self, timeout: float = 60) -> "JupyterServer":
        self.log_path = self.root / "jupyter-server.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        wait_answering(self.http, self.url + "/api/status", self.proc, timeout, self.log_path)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def call(self, method: str, p: str, body=None, timeout: float = 240) -> requests.Response:
        return self.http.request(method, self.url + p, json=body, timeout=timeout)

    def channels(self, kernel_id: str, session_id: str) -> JupyterWs:
        url = self.url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        return JupyterWs(url, self.token, session_id=session_id)


@pytest.fixture
def lab(ns, gateway, tmp_path):
    agent = Agent(ns, "lab")
    js = JupyterServer(tmp_path / "jupyter", gateway.url, agent.token).start()
    js.agent = agent
    yield js
    js.stop()
    if os.environ.get("NBO_SHOW_JUPYTER_LOG"):
        print(js.log()[-6000:], file=sys.stderr)


def test_jupyter_server_with_gateway_url_runs_a_notebooks_cells_on_a_session(lab, ns, gateway, kube):
    specs = lab.call("GET", "/api/kernelspecs")
    assert specs.status_code == 200, specs.text
    assert "python3" in specs.json()["kernelspecs"], specs.json()
    r = lab.call("POST", "/api/sessions", {"path": "lab.ipynb", "type": "notebook", "name": "lab.ipynb",
                                          "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text + lab.log()[-3000:]
    kernel_id = r.json()["kernel"]["id"]
    session = session_of_kernel(kube, ns, kernel_id)
    assert session["status"]["phase"] == "Ready", session["status"]
    c = lab.channels(kernel_id, secrets.token_hex(8))
    try:
        # A stream.
        reply, msgs = c.reply_to(c.execute("print('hello, lab')"), timeout=60)
        assert reply["content"]["status"] == "ok", reply
        assert stdout(msgs) == "hello, lab\n"
        # A display_data PNG, as it was displayed.
        reply, msgs = c.reply_to(c.execute(
            "import base64\nfrom IPython.display import Image, display\n"
            f"display(Image(data=base64.b64decode('{PNG_B64}')))"))
        (shown,) = iopub(msgs, "display_data")
        assert shown["content"]["data"]["image/png"].strip() == PNG_B64
        # An error with its traceback.
        reply, msgs = c.reply_to(c.execute("1/0"))
        assert reply["content"]["status"] == "error"
        (err,) = iopub(msgs, "error")
        assert err["content"]["ename"] == "ZeroDivisionError"
        assert any("1/0" in line or "ZeroDivisionError" in line for line in err["content"]["traceback"])
        # An ipywidgets IntSlider: its comm opens to the frontend, the
        # frontend's update reaches the kernel.
        reply, msgs = c.reply_to(c.execute("import ipywidgets as w\ns = w.IntSlider(value=3)\ndisplay(s)"))
        assert reply["content"]["status"] == "ok", reply
        opens = [m for m in iopub(msgs, "comm_open") if m["content"]["target_name"] == "jupyter.widget"
                 and m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"]
        assert opens, [m["header"]["msg_type"] for m in msgs]
        comm_id = opens[0]["content"]["comm_id"]
        assert opens[0]["content"]["data"]["state"]["value"] == 3
        (view,) = iopub(msgs, "display_data")
        assert view["content"]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] == comm_id
        c.send("shell", "comm_msg", {"comm_id": comm_id,
                                     "data": {"method": "update", "state": {"value": 7}, "buffer_paths": []}})
        reply, msgs = c.reply_to(c.execute("print(s.value)"))
        assert stdout(msgs) == "7\n"
        # Completion answers.
        reply, _ = c.reply_to(c.send("shell", "complete_request", {"code": "import o", "cursor_pos": 8}))
        assert "os" in reply["content"]["matches"]
        # An interrupt through Jupyter Server's REST API lands within 2 s.
        req = c.execute("import time; time.sleep(100)")
        c.until(lambda m: m["header"]["msg_type"] == "execute_input"
                and m["parent_header"].get("msg_id") == req["header"]["msg_id"])
        t0 = time.monotonic()
        r = lab.call("POST", f"/api/kernels/{kernel_id}/interrupt")
        assert r.status_code == 204, r.text
        reply, _ = c.reply_to(req, timeout=10)
        took = time.monotonic() - t0
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply
        assert took < 2, f"the interrupt took {took:.2f} s"
        # A restart clears a variable.
        c.reply_to(c.execute("x = 5"))
        r = lab.call("POST", f"/api/kernels/{kernel_id}/restart")
        assert r.status_code == 200, r.text
        reply, msgs = c.reply_to(c.execute("print(x)"), timeout=120)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "NameError", reply
    finally:
        c.close()
    listed = lab.call("GET", "/api/sessions").json()
    mine = [s for s in listed if s["kernel"]["id"] == kernel_id]
    assert mine, listed
    r = lab.call("DELETE", f"/api/sessions/{mine[0]['id']}")
    assert r.status_code == 204, r.text
    wait_no_sessions(kube, ns)


def test_an_agent_over_mcp_and_a_frontend_share_one_kernel_in_order(lab, ns, gateway, kube):
    """The frontend's cells and the agent's `execute` go through one queue:
    they run in the order they were sent, and each sees its own result."""
    r = lab.call("POST", "/api/kernels", {"name": "python3"})
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    name = session_of_kernel(kube, ns, kernel_id)["metadata"]["name"]
    c = lab.channels(kernel_id, secrets.token_hex(8))
    try:
        first = c.execute("import time; time.sleep(1.0); seq = ['frontend']")
        c.until(lambda m: m["header"]["msg_type"] == "execute_input"
                and m["parent_header"].get("msg_id") == first["header"]["msg_id"])
        t0 = time.monotonic()
        result = call(gateway, lab.agent.token, "execute",
                      {"namespace": str(ns), "session": name, "code": "seq.append('agent'); print(seq)"})
        agent_took = time.monotonic() - t0
        assert ok(result)["state"] == "completed", result
        assert "['frontend', 'agent']" in "".join(texts(result)), result
        reply, _ = c.reply_to(first)
        assert reply["content"]["status"] == "ok"
        # The agent's output reached the frontend too (iopub is everyone's).
        c.until(lambda m: m["header"]["msg_type"] == "stream" and "['frontend', 'agent']" in m["content"]["text"])
        then = c.execute("print(len(seq))")
        _, msgs = c.reply_to(then)
        assert stdout(msgs) == "2\n"
        assert agent_took < 30, agent_took
    finally:
        c.close()
    assert lab.call("DELETE", f"/api/kernels/{kernel_id}").status_code == 204
    wait_no_sessions(kube, ns)


# -- JupyterLab in a browser --------------------------------------------------------------------
def setup_script(name: str, timeout: float) -> str:
    """What one of tests/cluster's install scripts printed (it fails the test when it fails)."""
    out = subprocess.run([str(ROOT / "tests" / "cluster" / name)], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def browser_paths():
    chromium, driver = setup_script("browser-env", timeout=900).split()
    return chromium, driver


def headless_chromium(paths):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]:
        options.add_argument(a)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def test_jupyterlab_in_a_browser_runs_cells_on_a_session_beside_an_agent(ns, gateway, kube, browser_paths, tmp_path):
    """JupyterLab (with --gateway-url) in headless Chromium opens a notebook
    and runs its cells on a NotebookSession; meanwhile an agent's MCP
    `execute` on the same session runs between the browser's cells, in the
    order sent, and its output reaches the agent. A screenshot of the page is
    the test's artefact."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    agent = Agent(ns, "browser")
    lab = JupyterServer(tmp_path / "lab", gateway.url, agent.token, app="jupyterlab").start()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time; time.sleep(2); seq = ['browser']; print('browser', 6 * 7)"),
                nbformat.v4.new_code_cell("print(seq)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / "shared.ipynb")
    driver = headless_chromium(browser_paths)
    shot = ARTIFACTS / "jupyterlab-on-a-notebooksession.png"
    try:
        driver.get(f"{lab.url}/lab/tree/shared.ipynb?token={lab.token}")
        wait = WebDriverWait(driver, 240)

        def cell(i):
            return driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")[i]

        def output_of(i, text):
            return [e.text for e in cell(i).find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output") if text in e.text]

        def run(i):
            cell(i).find_element(By.CSS_SELECTOR, ".jp-InputArea-editor").click()
            ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")) == 2)
        # Opening the notebook started its kernel: a NotebookSession, Ready.
        deadline = time.monotonic() + 240
        while not kube.list(path("NotebookSession", ns)):
            assert time.monotonic() < deadline, lab.log()[-3000:]
            time.sleep(0.2)
        (session,) = kube.list(path("NotebookSession", ns))
        name = session["metadata"]["name"]
        while kube.get(path("NotebookSession", ns, name)).get("status", {}).get("phase") != "Ready":
            assert time.monotonic() < deadline, kube.get(path("NotebookSession", ns, name)).get("status")
            time.sleep(0.2)
        # The page is connected to it (its status bar says the kernel is idle).
        wait.until(lambda d: "Idle" in d.find_element(By.ID, "jp-main-statusbar").text)
        run(0)
        sidecar = SidecarApi(kube, str(ns), name)
        wait.until(lambda d: [e for e in sidecar.http.get(sidecar.url + "/v1/executions", timeout=10)
                              .json()["executions"] if e["state"] == "running"])
        # The agent's cell is queued behind the browser's and sees its result.
        result = call(gateway, agent.token, "execute",
                      {"namespace": str(ns), "session": name, "code": "seq.append('agent'); print(seq)"})
        assert ok(result)["state"] == "completed", result
        assert "['browser', 'agent']" in "".join(texts(result)), result
        wait.until(lambda d: output_of(0, "browser 42"))
        run(1)
        wait.until(lambda d: output_of(1, "['browser', 'agent']"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"\n[jupyterlab] screenshot: {shot}", file=sys.stderr)
    finally:
        try:
            if not shot.exists():
                shot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(shot.with_name("jupyterlab-failed.png")))
        finally:
            driver.quit()
            lab.stop()


# -- nbclient -------------------------------------------------------------------------------------
NOTEBOOK_CELLS = [
    "print('stream output')\nimport sys; print('to stderr', file=sys.stderr)",
    f"import base64\nfrom IPython.display import Image, Markdown, display\n"
    f"display(Image(data=base64.b64decode('{PNG_B64}')))\ndisplay(Markdown('**bold**'))",
    "x = 21\nx * 2",
    "1/0",
    "for i in range(3):\n    print(i)",
]


def nbclient_run(km=None) -> nbformat.NotebookNode:
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    kw = {"km": km} if km is not None else {}
    # Streams coalesced in both runs: where the kernel splits a stream into
    # messages depends on its flush timing, not on the transport.
    client = NotebookClient(nb, timeout=120, startup_timeout=200, allow_errors=True, kernel_name="python3",
                            coalesce_streams=True, **kw)
    asyncio.run(client.async_execute())
    return nb


def comparable(nb) -> list:
    cells = []
    for cell in nb.cells:
        outs = []
        for o in cell.outputs:
            o = copy.deepcopy(dict(o))
            o.pop("metadata", None)
            if o.get("output_type") == "error":
                # The traceback names the kernel's temporary file; its last line is the error itself.
                o["traceback"] = o["traceback"][-1:]
            outs.append(json.loads(json.dumps(o)))
        cells.append({"execution_count": cell.get("execution_count"), "outputs": outs})
    return cells


def gateway_kernel_manager(gateway_url: str, token: str):
    """Jupyter Server's GatewayKernelManager for nbclient. Its kernel client
    opens the channels WebSocket without GatewayClient's auth headers (the
    REST calls carry them), so the one method that opens it is given them."""
    import websocket
    from jupyter_core.utils import ensure_async
    from jupyter_server.gateway.gateway_client import GatewayClient
    from jupyter_server.gateway.managers import GatewayKernelClient, GatewayKernelManager
    from jupyter_server.utils import url_path_join
    from tornado.escape import url_escape

    GatewayClient.clear_instance()
    gc = GatewayClient.instance(url=gateway_url, auth_token=token, auth_scheme="Bearer",
                                request_timeout=200.0, connect_timeout=60.0)
    gc.init_connection_args()

    class AuthenticatedKernelClient(GatewayKernelClient):
        async def start_channels(self, shell=True, iopub=True, stdin=True, hb=True, control=True):
            url = url_path_join(gc.ws_url, gc.kernels_endpoint, url_escape(self.kernel_id), "channels")
            self.channel_socket = websocket.create_connection(url, timeout=200, enable_multithread=True,
                                                              header=[f"Authorization: Bearer {token}"])
            await ensure_async(super(GatewayKernelClient, self).start_channels(
                shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control))
            self.response_router = threading.Thread(target=self._route_responses)
            self.response_router.start()

    return GatewayKernelManager(client_factory=AuthenticatedKernelClient)


def test_nbclient_runs_a_notebook_on_a_session_with_the_outputs_of_a_local_kernel(ns, gateway, kube):
    agent = Agent(ns, "papermill")
    local = nbclient_run()
    km = gateway_kernel_manager(gateway.url, agent.token)
    remote = nbclient_run(km)
    assert comparable(remote) == comparable(local)
    # The error cell is an error in both; the PNG came through whole.
    assert remote.cells[3].outputs[0]["ename"] == "ZeroDivisionError"
    assert remote.cells[1].outputs[0]["data"]["image/png"].strip() == PNG_B64
    # nbclient leaves a kernel manager it was given running; shutting it
    # down (as papermill's caller would) deletes the NotebookSession.
    assert km.kernel_id and session_of_kernel(kube, ns, km.kernel_id)
    asyncio.run(km.shutdown_kernel())
    wait_no_sessions(kube, ns)


# -- @jupyterlab/services -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jlab_dir():
    return pathlib.Path(setup_script("jlab-env", timeout=600).strip())


class NodeSteps:
    def __init__(self, proc):
        self.proc = proc
        self.lines = []

    def step(self, name: str, timeout: float = 120) -> dict:
        box = {}

        def read():
            for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    self.lines.append({"not a step": line.rstrip()})
                    continue
                self.lines.append(msg)
                if "error" in msg or msg.get("step") == name:
                    box["msg"] = msg
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        assert "msg" in box, f"no step {name!r} in {timeout}s; so far {self.lines}; stderr: {self.stderr()}"
        assert "error" not in box["msg"], box["msg"]["error"] + "\n" + self.stderr()
        return box["msg"]

    def stderr(self) -> str:
        return ""


def test_jupyterlab_services_runs_a_cell_and_survives_a_gateway_restart(ns, gateway, kube, jlab_dir, tmp_path):
    agent = Agent(ns, "vscode")
    err = open(tmp_path / "services.stderr", "w+")
    proc = subprocess.Popen(["node", str(jlab_dir / "services.js"), gateway.url, agent.token], cwd=jlab_dir,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
    steps = NodeSteps(proc)
    steps.stderr = lambda: (err.seek(0), err.read()[-4000:])[1]
    try:
        specs = steps.step("specs")
        assert specs["default"] in specs["names"], specs
        started = steps.step("started", timeout=200)
        session = session_of_kernel(kube, ns, started["kernel"])
        assert steps.step("executed")["result"] == "2"
        steps.step("running")
        # The gateway goes away while the cell runs; the cell ends meanwhile.
        gateway.stop()
        try:
            sidecar = SidecarApi(kube, str(ns), session["metadata"]["name"])
            mine = [e for e in sidecar.http.get(sidecar.url + "/v1/executions", timeout=10).json()["executions"]
                    if "6*7" in e["code"]]
            assert sidecar.wait_final(mine[0]["id"])["state"] == "completed"
        finally:
            gateway.start()
        meanwhile = steps.step("meanwhile", timeout=120)
        assert meanwhile["status"] == "ok" and meanwhile["result"] == "42", meanwhile
        assert "connecting" in meanwhile["statuses"], meanwhile
        proc.stdin.write("continue\n")
        proc.stdin.flush()
        listed = steps.step("listed")
        assert [s for s in listed["sessions"] if s["kernel"] == started["kernel"]], listed
        steps.step("shut down")
        assert proc.wait(30) == 0, steps.stderr()
        wait_no_sessions(kube, ns)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- bad input on the channels -----------------------------------------------------------------
def test_the_channels_refuse_before_the_upgrade_and_close_on_a_frame_that_is_not_a_message(ns, gateway, kube):
    import websocket
    agent = Agent(ns, "frames")
    stranger = Agent(ns, "stranger", verbs=[])
    http = agent.http()
    r = http.post(gateway.url + "/api/kernels", json={"name": "python3"}, timeout=240)
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    url = gateway.url.replace("http://", "ws://") + f"/api/kernels/{kid}/channels"
    # No token, a bad one, and one without rights: refused before any upgrade.
    for header, status in [([], 401), (["Authorization: Bearer not-a-token"], 401),
                           ([f"Authorization: Bearer {stranger.token}"], 403)]:
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            websocket.create_connection(url, header=header, timeout=30)
        assert e.value.status_code == status, (header, e.value)
    # An unknown kernel id: 404.
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(url.replace(kid, "00000000-0000-4000-8000-000000000000"),
                                    header=[f"Authorization: Bearer {agent.token}"], timeout=30)
    assert e.value.status_code == 404
    name = session_of_kernel(kube, ns, kid)["metadata"]["name"]
    before = SidecarApi(kube, str(ns), name).status()["queue"]
    ws = websocket.create_connection(url + f"?token={agent.token}", timeout=30)
    try:
        ws.send('{"channel": "shell", "header": {"msg_id": "x"}, "content": {"code": "print(1)"}}')
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 1007 and b"not a Jupyter message" in data[2:], data
    finally:
        ws.close()
    assert SidecarApi(kube, str(ns), name).status()["queue"] == before
    # The kernel serves the next client.
    c = JupyterWs(url, agent.token, session_id=secrets.token_hex(8))
    try:
        reply, msgs = c.reply_to(c.execute("print('still here')"))
        assert stdout(msgs) == "still here\n"
    finally:
        c.close()
    assert http.delete(gateway.url + f"/api/kernels/{kid}", timeout=60).status_code == 204


# -- measure --------------------------------------------------------------------------------------
def time_one_plus_one(c: JupyterWs, n: int) -> list[float]:
    for _ in range(3):
        c.reply_to(c.execute("1+1"))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        reply, msgs = c.reply_to(c.execute("1+1"))
        out.append((time.perf_counter() - t0) * 1000)
        assert reply["content"]["status"] == "ok" and iopub(msgs, "execute_result")
    return out


def test_measure_one_plus_one_over_the_channels_against_stock_kernel_gateway(ns, gateway, kube, tmp_path, capsys):
    n = int(os.environ.get("NBO_JUPYTER_MEASURE_N", "100"))
    agent = Agent(ns, "measure")
    http = agent.http()
    r = http.post(gateway.url + "/api/kernels", json={"name": "python3"}, timeout=240)
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    ours = JupyterWs(gateway.url.replace("http://", "ws://") + f"/api/kernels/{kid}/channels", agent.token,
                     session_id=secrets.token_hex(8))
    try:
        via_gateway = time_one_plus_one(ours, n)
    finally:
        ours.close()
    # Stock Jupyter Kernel Gateway on a local ipykernel, same machine, same client.
    port, token = free_port(), secrets.token_hex(8)
    kg_log = open(tmp_path / "kernel-gateway.log", "wb")
    kg = subprocess.Popen([PY, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                           f"--KernelGatewayApp.port={port}", f"--KernelGatewayApp.auth_token={token}",
                           "--KernelGatewayApp.port_retries=0"], stdout=kg_log, stderr=subprocess.STDOUT,
                          env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "kg-runtime")},
                          start_new_session=True)
    try:
        kg_http = requests.Session()
        kg_http.headers["Authorization"] = f"token {token}"
        wait_answering(kg_http, f"http://127.0.0.1:{port}/api", kg, 60, tmp_path / "kernel-gateway.log")
        k = kg_http.post(f"http://127.0.0.1:{port}/api/kernels", json={"name": "python3"}, timeout=60).json()
        stock = JupyterWs(f"ws://127.0.0.1:{port}/api/kernels/{k['id']}/channels", token,
                          session_id=secrets.token_hex(8), scheme="token")
        try:
            via_stock = time_one_plus_one(stock, n)
        finally:
            stock.close()
    finally:
        kg.terminate()
        kg.wait(30)
    assert http.delete(gateway.url + f"/api/kernels/{kid}", timeout=60).status_code == 204
    with capsys.disabled():
        ours50, ours99 = percentile(via_gateway, 50), percentile(via_gateway, 99)
        kg50, kg99 = percentile(via_stock, 50), percentile(via_stock, 99)
        print(f"\n[jupyter measure] 1+1 over /api/kernels/{{id}}/channels, n={n}: "
              f"our gateway (NotebookSession, queue) p50 {ours50:.1f} ms p99 {ours99:.1f} ms; "
              f"stock jupyter-kernel-gateway 3.0.1 (local kernel) p50 {kg50:.1f} ms p99 {kg99:.1f} ms; "
              f"ratio p50 {ours50 / kg50:.2f} p99 {ours99 / kg99:.2f}; mean ours {statistics.mean(via_gateway):.1f} "
              f"stock {statistics.mean(via_stock):.1f}")
