"""A TCP forwarder on 127.0.0.1 that can silently drop traffic: a network partition
without connection resets, as a dead switch or a pulled cable looks to the nodes."""
from __future__ import annotations

import socket
import threading


class LinkProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.cut = False  # both ways
        self.cut_to_target = False  # one way: what the connecting side sends vanishes
        self.cut_from_target = False  # one way: what the target sends back vanishes
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.address = self._listener.getsockname()
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            for a, b, to_target in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, to_target), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_target: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not (self.cut or (self.cut_to_target if to_target else self.cut_from_target)):
                    # while cut, bytes vanish: no reset, no answer
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
