"""A TCP proxy in front of several backends with client-IP affinity, as a
Service with `sessionAffinity: ClientIP` spreads clients over replicas: the
first connection from an address picks the next backend in turn, and every
later one from that address goes to the same backend. Loopback only; each
connection is two threads copying bytes until either side closes."""
from __future__ import annotations

import socket
import threading

from harness import free_port


class AffinityProxy:
    def __init__(self, backends: list[tuple[str, int]]):
        self.backends = backends
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.assigned: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "AffinityProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)

    def _backend(self, ip: str) -> tuple[str, int]:
        with self._lock:
            if ip not in self.assigned:
                self.assigned[ip] = len(self.assigned) % len(self.backends)
            return self.backends[self.assigned[ip]]

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, (ip, _) = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._backend(ip), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
