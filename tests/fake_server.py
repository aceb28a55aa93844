"""A misbehaving HTTP server for the wandb tests: silent, garbage, error pages."""

import socket
import threading


class FakeServer:
    """A local TCP server: ``'silent'`` accepts and never answers, ``'garbage'`` answers
    bytes that are not HTTP, a number answers that HTTP status with an HTML page (a proxy's),
    ``'stalls_wandb'`` answers GET (the probe) with 200 but never answers wandb's POSTs."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        if self.behaviour == "silent":
            self.held.append(conn)
            return
        request = conn.recv(65536)
        if self.behaviour == "stalls_wandb" and not request.startswith(b"GET"):
            self.held.append(conn)
            return
        with conn:
            if self.behaviour == "garbage":
                conn.sendall(b"\x00\x01 this is no HTTP\r\n\r\n")
                return
            body = b"<html>blocked by the proxy</html>"
            status = 200 if self.behaviour == "stalls_wandb" else self.behaviour
            head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
            conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()
