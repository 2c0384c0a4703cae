"""A loopback HTTP/1.1 proxy that adds `Authorization: Bearer <token>` to
every request and changes nothing else (Host and Origin pass through, so the
server's DNS-rebinding checks still see what the client sent).

The MCP conformance suite has no option for a bearer token; /mcp answers 401
without one (by design), so the suite reaches it through this proxy.

Only the client→server direction is parsed (request heads, Content-Length and
chunked bodies, so keep-alive connections work); responses, SSE streams
included, are piped through unchanged.
"""
import asyncio
import threading


class AuthProxy:
    def __init__(self, upstream_port: int, token: str):
        self.upstream_port = upstream_port
        self.token = token
        self.port = None
        self._loop = None
        self._server = None
        self._thread = None

    def start(self) -> "AuthProxy":
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the auth proxy did not start")
        return self

    def stop(self):
        if self._loop:
            def close():
                self._server.close()
                for t in asyncio.all_tasks(self._loop):
                    t.cancel()
                self._loop.stop()
            self._loop.call_soon_threadsafe(close)
            self._thread.join(10)

    async def _handle(self, creader, cwriter):
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cwriter.close()
            return
        pipe = asyncio.ensure_future(self._pipe(ureader, cwriter))
        try:
            while True:
                head = await creader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                out = [lines[0]]
                length, chunked = 0, False
                for line in lines[1:]:
                    if not line:
                        continue
                    name, _, value = line.partition(":")
                    lname = name.strip().lower()
                    if lname == "authorization":
                        continue
                    if lname == "content-length":
                        length = int(value.strip())
                    if lname == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                    out.append(line)
                out.append(f"Authorization: Bearer {self.token}")
                uwriter.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
                if chunked:
                    while True:
                        size_line = await creader.readuntil(b"\r\n")
                        uwriter.write(size_line)
                        size = int(size_line.split(b";")[0].strip(), 16)
                        uwriter.write(await creader.readexactly(size + 2))
                        if size == 0:
                            break
                elif length:
                    uwriter.write(await creader.readexactly(length))
                await uwriter.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ValueError):
            pass
        finally:
            pipe.cancel()
            for w in (uwriter, cwriter):
                try:
                    w.close()
                except Exception:
                    pass

    @staticmethod
    async def _pipe(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass
