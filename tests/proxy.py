"""A TCP proxy a test controls: it forwards to a server, and can blackhole every connection.

Blackholed, it keeps every connection open but moves no byte either way (a network partition);
restored, what was waiting flows again. A fault for one process, never for the shared server.
Cut, it closes every connection it carries and takes new ones as before (a reset by a firewall
or a broken link). It runs as its own process (`python -m tests.proxy HOST:PORT`, SIGUSR1
blackholes, SIGUSR2 restores, SIGHUP cuts), so nothing the test process does (green threads, a
blocking call) can stall it.
"""

import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from tests.farm import ROOT


class TcpProxy:
    """A proxy process listening on 127.0.0.1 (port chosen by the system) for `upstream`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "TcpProxy":
        self._process = subprocess.Popen([sys.executable, "-m", "tests.proxy", self.upstream],
                                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._process is not None
        self._process.kill()
        self._process.wait(10)

    def blackhole(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGUSR1)

    def restore(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGUSR2)

    def cut(self) -> None:
        """Close every connection the proxy carries now; new ones are taken as before."""
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)


def _serve(upstream: str) -> None:
    host, port = upstream.rsplit(":", 1)
    flowing = threading.Event()
    flowing.set()
    carried: set[socket.socket] = set()

    def cut(*_: Any) -> None:
        for end in list(carried):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    signal.signal(signal.SIGUSR1, lambda *_: flowing.clear())
    signal.signal(signal.SIGUSR2, lambda *_: flowing.set())
    signal.signal(signal.SIGHUP, cut)
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)

    def pump(client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while True:
                flowing.wait()
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                if not flowing.is_set():
                    continue  # partitioned meanwhile: what arrived waits in the kernel
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    peers[end].sendall(data)
        except OSError:
            return
        finally:
            carried.difference_update((client, server))
            client.close()
            server.close()

    while True:
        client, _ = listener.accept()
        flowing.wait()  # a partition refuses nothing, but answers nothing either
        try:
            server = socket.create_connection((host, int(port)))
        except OSError:
            client.close()
            continue
        carried.update((client, server))
        threading.Thread(target=pump, args=(client, server), daemon=True).start()


if __name__ == "__main__":
    _serve(sys.argv[1])
