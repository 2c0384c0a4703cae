"""The official MCP Python SDK as the client of the sidecar's /mcp."""
import contextlib

import anyio
from harness import Sidecar
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


@contextlib.asynccontextmanager
async def mcp_session(s: Sidecar, token=None, headers=None):
    """An initialized ClientSession against the sidecar's /mcp."""
    h = {"Authorization": f"Bearer {token or s.token}", **(headers or {})}
    async with create_mcp_http_client(headers=h) as http:
        async with streamable_http_client(f"{s.url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                session.init_result = await session.initialize()
                yield session


def run_mcp(s: Sidecar, fn, **kw):
    """Runs `await fn(session)` in a fresh session and returns its result."""
    async def main():
        async with mcp_session(s, **kw) as session:
            return await fn(session)
    return anyio.run(main)
