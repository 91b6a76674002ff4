"""One guest TCP connection relayed to a server on the host's loopback (QEMU's
``guestfwd=tcp:ADDR:PORT-cmd:...`` runs this once per connection, the connection on its stdin
and stdout). Usage: ``python tcprelay.py HOST PORT``. Ends when either side closes."""

from __future__ import annotations

import os
import selectors
import socket
import sys

CHUNK = 65536


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    upstream = socket.create_connection((host, port), timeout=30)
    upstream.settimeout(None)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(stdin, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj == stdin:
                    data = os.read(stdin, CHUNK)
                    if not data:
                        upstream.shutdown(socket.SHUT_WR)
                        sel.unregister(stdin)
                        continue
                    upstream.sendall(data)
                else:
                    data = upstream.recv(CHUNK)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdout, view) :]


if __name__ == "__main__":
    sys.exit(main())
