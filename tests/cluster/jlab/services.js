// @jupyterlab/services (the kernel client of JupyterLab and VS Code) against
// the gateway's Jupyter kernel API, driven step by step by
// tests/cluster/test_jupyter_clients.py: each step prints one JSON line on
// stdout; `continue` on stdin lets the next step go. Bounded in time.
'use strict';
const readline = require('readline');
const WebSocket = require('ws');
const { ServerConnection, KernelSpecAPI, KernelManager, SessionManager } = require('@jupyterlab/services');

const [baseUrl, token] = process.argv.slice(2);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
// The library's own logging goes to stderr: stdout carries the steps only.
for (const level of ['log', 'debug', 'info', 'warn', 'error']) {
  console[level] = (...args) => process.stderr.write(`[${level}] ${args.join(' ')}\n`);
}
setTimeout(() => { say({ error: 'timed out' }); process.exit(2); }, 300 * 1000).unref();

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', (l) => { const w = waiting.shift(); if (w) w(l); });
const next = () => new Promise((resolve) => waiting.push(resolve));

// Everything a future's iopub brought, and its reply.
async function run(kernel, code, onMessage) {
  const future = kernel.requestExecute({ code });
  const outputs = [];
  future.onIOPub = (msg) => {
    outputs.push({ type: msg.header.msg_type, content: msg.content });
    if (onMessage) onMessage(msg);
  };
  const reply = await future.done;
  const result = outputs.find((o) => o.type === 'execute_result');
  return { status: reply.content.status, result: result ? result.content.data['text/plain'] : null,
           count: reply.content.execution_count };
}

async function main() {
  const serverSettings = ServerConnection.makeSettings({ baseUrl, token, WebSocket, appendToken: true });
  const specs = await KernelSpecAPI.getSpecs(serverSettings);
  say({ step: 'specs', default: specs.default, names: Object.keys(specs.kernelspecs) });

  const kernelManager = new KernelManager({ serverSettings });
  const sessions = new SessionManager({ kernelManager, serverSettings });
  await sessions.ready;
  const session = await sessions.startNew({ path: 'services.ipynb', type: 'notebook', name: 'services.ipynb',
                                             kernel: { name: specs.default } });
  const kernel = session.kernel;
  const statuses = [];
  kernel.connectionStatusChanged.connect((_, s) => statuses.push(s));
  say({ step: 'started', kernel: kernel.id, session: session.id, clientId: kernel.clientId });

  say({ step: 'executed', ...(await run(kernel, '1+1')) });

  // A cell that runs while the test restarts the gateway under us.
  let announced = false;
  const meanwhile = run(kernel, 'import time; time.sleep(3); 6*7', (msg) => {
    if (msg.header.msg_type === 'execute_input' && !announced) {
      announced = true;
      say({ step: 'running' });
    }
  });
  say({ step: 'meanwhile', ...(await meanwhile), statuses });
  await next();

  const listed = await sessions.refreshRunning().then(() => Array.from(sessions.running()));
  say({ step: 'listed', sessions: listed.map((s) => ({ id: s.id, path: s.path, kernel: s.kernel && s.kernel.id })) });
  await session.shutdown();
  say({ step: 'shut down' });
  kernelManager.dispose();
  sessions.dispose();
  process.exit(0);
}

main().catch((e) => { say({ error: String(e && e.stack || e) }); process.exit(1); });
