"""A minimal SSE reader over a raw socket, so a test controls exactly when
bytes are read (or never read)."""
import socket

from harness import sse_event


class SseClient:
    def __init__(self, url_host: str, port: int, token: str, query: str = "", rcvbuf: int | None = None,
                 headers: dict | None = None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((url_host, port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        req = (f"GET /v1/events{query} HTTP/1.1\r\nHost: {url_host}\r\nAuthorization: Bearer {token}\r\n"
               f"Accept: text/event-stream\r\n{extra}\r\n")
        self.sock.sendall(req.encode())
        self.buf = b""
        self.status = None
        self.chunked = False

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError
        self.buf += data

    def _headers(self, timeout):
        while b"\r\n\r\n" not in self.buf:
            self._fill(timeout)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.chunked = any(l.lower() == "transfer-encoding: chunked" for l in lines[1:])
        self.raw = b""

    def _dechunk(self, timeout):
        # Moves complete chunks from buf into raw.
        while True:
            if b"\r\n" not in self.buf:
                self._fill(timeout)
                continue
            size_line, rest = self.buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            if size == 0:
                raise EOFError
            while len(rest) < size + 2:
                self._fill(timeout)
                size_line, rest = self.buf.split(b"\r\n", 1)
            self.raw += rest[:size]
            self.buf = rest[size + 2:]
            return

    def events(self, timeout: float = 30):
        """Yields (id, data dict) per SSE event; ends at EOF."""
        if self.status is None:
            self._headers(timeout)
            if self.status != 200:
                return
        while True:
            while b"\n\n" not in self.raw:
                try:
                    if self.chunked:
                        self._dechunk(timeout)
                    else:
                        self._fill(timeout)
                        self.raw, self.buf = self.raw + self.buf, b""
                except EOFError:
                    return
            block, self.raw = self.raw.split(b"\n\n", 1)
            event = sse_event(block)
            if event is not None:
                yield event

    def close(self):
        self.sock.close()
