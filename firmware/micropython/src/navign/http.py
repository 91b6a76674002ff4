# A small HTTP/1.1 client for the gateway's firmware endpoints (docs/protocol.md §8.1): one
# request per connection (Connection: close), bodies streamed into a caller's buffer, every length
# bounded: a status or header line over 512 bytes, more than 32 headers, or a body longer than
# its Content-Length is an error, never a MemoryError.
import socket

from navign.errors import NavignError

MAX_LINE = 512
MAX_HEADERS = 32


class HTTPError(NavignError):
    pass


class Response:
    def __init__(self, sock, status, headers):
        self.sock = sock
        self.status = status
        self.headers = headers
        length = headers.get("content-length")
        self.length = -1
        if length is not None:
            try:
                self.length = int(length)
            except ValueError:
                raise HTTPError("bad_response", "Content-Length")
            if self.length < 0:
                raise HTTPError("bad_response", "Content-Length")
        self.left = self.length

    def readinto(self, buf):
        # Up to len(buf) body bytes; 0 at the end of the body.
        if self.left == 0:
            return 0
        view = memoryview(buf)
        if 0 < self.left < len(buf):
            view = view[: self.left]
        n = self.sock.readinto(view)
        if not n:
            if self.left > 0:
                raise HTTPError("truncated", "the body ended early")
            return 0
        if self.left > 0:
            self.left -= n
        return n

    def read_all(self, limit):
        # The whole body (a bytearray of exactly Content-Length bytes, read in place), refused
        # when longer than `limit` or of unknown length.
        if self.length < 0:
            raise HTTPError("bad_response", "no Content-Length")
        if self.length > limit:
            raise HTTPError("too_large", "%d bytes" % self.length)
        out = bytearray(self.length)
        view = memoryview(out)
        got = 0
        while got < self.length:
            n = self.readinto(view[got:])
            if not n:
                raise HTTPError("truncated", "the body ended early")
            got += n
        return out

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _readline(sock, buf):
    # One CRLF-terminated line (without it) as str; bounded by len(buf).
    n = 0
    one = bytearray(1)
    while True:
        if not sock.readinto(one):
            raise HTTPError("truncated", "connection closed in the headers")
        if one[0] == 10:
            break
        if n >= len(buf):
            raise HTTPError("bad_response", "header line too long")
        buf[n] = one[0]
        n += 1
    if n and buf[n - 1] == 13:
        n -= 1
    return bytes(buf[:n]).decode()


def request(host, port, method, path, headers=None, body=None, timeout=10):
    # Sends the request; returns a Response whose body the caller reads, then closes.
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(addr)
        lines = [
            method + " " + path + " HTTP/1.1",
            "Host: %s:%d" % (host, port),
            "Connection: close",
        ]
        if headers:
            for key in headers:
                lines.append(key + ": " + str(headers[key]))
        if body is not None:
            lines.append("Content-Length: %d" % len(body))
        sock.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if body is not None:
            sock.write(body)
        buf = bytearray(MAX_LINE)
        status_line = _readline(sock, buf)
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HTTPError("bad_response", "status line")
        try:
            status = int(parts[1])
        except ValueError:
            raise HTTPError("bad_response", "status code")
        found = {}
        for _ in range(MAX_HEADERS + 1):
            line = _readline(sock, buf)
            if not line:
                return Response(sock, status, found)
            key, sep, value = line.partition(":")
            if not sep:
                raise HTTPError("bad_response", "header line")
            found[key.strip().lower()] = value.strip()
        raise HTTPError("bad_response", "too many headers")
    except OSError as exc:
        sock.close()
        raise HTTPError("network", str(exc))
    except HTTPError:
        sock.close()
        raise
