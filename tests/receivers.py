"""Receivers a notification test starts on 127.0.0.1: a webhook server and an SMTP server."""

import mailbox
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.farm import free_port


@dataclass
class Received:
    """One request as the receiver saw it, and what it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None


class WebhookReceiver:
    """Answers POSTs with the statuses in `answers`, in turn (the last one for ever after);
    an answer of None never answers at all (the connection is held until the receiver stops)."""

    def __init__(self, answers: list[int | None] | None = None) -> None:
        self.answers = list(answers or [200])
        self.received: list[Received] = []
        self._stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                position = len(receiver.received)
                answer = receiver.answers[min(position, len(receiver.answers) - 1)]
                receiver.received.append(Received(self.path, dict(self.headers.items()), body,
                                                  answer))
                if answer is None:
                    receiver._stopping.wait()
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/corral"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def answered(self, status: int) -> list[Received]:
        return [r for r in self.received if r.answered == status]


@contextmanager
def smtp_server(directory: Path) -> Iterator[tuple[int, Path]]:
    """aiosmtpd in a process of its own, keeping each mail it takes in a Maildir; (port, dir)."""
    port = free_port()
    box = directory / "maildir"
    process = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l",
                                f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Mailbox",
                                str(box)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port, box
    finally:
        process.kill()
        process.wait(10)


def mails(box: Path) -> list[Message]:
    return list(mailbox.Maildir(box, create=False)) if box.exists() else []
