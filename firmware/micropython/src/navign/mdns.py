# A small DNS-SD querier over mDNS (RFC 6762/6763) for MicroPython: finds the gateway's
# `_navign-fw._tcp.local` service. One-shot "legacy unicast" queries (sent from an ephemeral port,
# so responders answer to it directly, RFC 6762 §6.7) for PTR, then SRV/TXT/A as needed. Every
# length and pointer in a response is bounds-checked: a malformed packet is ignored, never a crash.
import socket
import struct
import time

MDNS_ADDR = "224.0.0.251"
MDNS_PORT = 5353
T_A = 1
T_PTR = 12
T_TXT = 16
T_SRV = 33
MAX_PACKET = 1500
MAX_NAME = 255
MAX_POINTERS = 16


class Malformed(Exception):
    pass


def encode_name(name):
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        if not 0 < len(raw) < 64:
            raise ValueError("label length")
        out.append(len(raw))
        out.extend(raw)
    out.append(0)
    return bytes(out)


def query(names_types, qid=0):
    # A query packet for [(name, type)].
    out = bytearray(struct.pack("!HHHHHH", qid, 0, len(names_types), 0, 0, 0))
    for name, qtype in names_types:
        out.extend(encode_name(name))
        out.extend(struct.pack("!HH", qtype, 1))
    return bytes(out)


def read_name(packet, pos):
    # (name, position after it); follows compression pointers, bounded in count and length.
    labels = []
    total = 0
    end = -1
    jumps = 0
    n = len(packet)
    while True:
        if pos >= n:
            raise Malformed("name runs past the packet")
        length = packet[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise Malformed("truncated pointer")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise Malformed("pointer loop")
            target = ((length & 0x3F) << 8) | packet[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= pos:
                raise Malformed("forward pointer")
            pos = target
            continue
        if length & 0xC0:
            raise Malformed("label type")
        pos += 1
        if length == 0:
            break
        if pos + length > n:
            raise Malformed("label runs past the packet")
        total += length + 1
        if total > MAX_NAME:
            raise Malformed("name too long")
        labels.append(bytes(packet[pos : pos + length]).decode())
        pos += length
    return ".".join(labels), (end if end >= 0 else pos)


def parse(packet):
    # The records of a response: [(name, type, rdata_decoded)]. Raises Malformed.
    if len(packet) < 12:
        raise Malformed("short header")
    _qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", packet, 0)
    if not flags & 0x8000:
        raise Malformed("not a response")
    if qd + an + ns + ar > 64:
        raise Malformed("too many records")
    pos = 12
    for _ in range(qd):
        _name, pos = read_name(packet, pos)
        pos += 4
    records = []
    for _ in range(an + ns + ar):
        name, pos = read_name(packet, pos)
        if pos + 10 > len(packet):
            raise Malformed("truncated record")
        rtype, _rclass, _ttl, rdlen = struct.unpack_from("!HHIH", packet, pos)
        pos += 10
        end = pos + rdlen
        if end > len(packet):
            raise Malformed("rdata runs past the packet")
        if rtype == T_PTR:
            value, after = read_name(packet, pos)
            if after > end:
                raise Malformed("PTR")
        elif rtype == T_SRV:
            if rdlen < 7:
                raise Malformed("SRV")
            _prio, _weight, port = struct.unpack_from("!HHH", packet, pos)
            target, after = read_name(packet, pos + 6)
            if after > end:
                raise Malformed("SRV")
            value = (target, port)
        elif rtype == T_A:
            if rdlen != 4:
                raise Malformed("A")
            value = "%d.%d.%d.%d" % tuple(packet[pos : pos + 4])
        elif rtype == T_TXT:
            value = {}
            p = pos
            while p < end:
                ln = packet[p]
                p += 1
                if p + ln > end:
                    raise Malformed("TXT")
                item = bytes(packet[p : p + ln]).decode()
                p += ln
                key, _, val = item.partition("=")
                if key:
                    value[key.lower()] = val
        else:
            value = None
        records.append((name.lower(), rtype, value))
        pos = end
    return records


def _ask(sock, dest, packet, timeout_ms, feed=None):
    # Send `packet`, collect parsed records until `timeout_ms` passes.
    sock.sendto(packet, dest)
    deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
    records = []
    buf = bytearray(MAX_PACKET)
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        if feed:
            feed()
        try:
            n = sock.readinto(buf)
        except OSError:
            n = None
        if not n:
            time.sleep_ms(20)
            continue
        try:
            records.extend(parse(memoryview(buf)[:n]))
        except (Malformed, UnicodeError, ValueError):
            pass  # someone else's, or hostile: ignore it
        if records:
            break
    return records


def discover(service, dest=None, timeout_ms=2000, attempts=3, feed=None):
    # (host, port) of the first instance of `service`, or None. `dest` defaults to the mDNS
    # group; tests give a unicast responder.
    host, port = dest or (MDNS_ADDR, MDNS_PORT)
    dest = socket.getaddrinfo(host, port)[0][-1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(socket.getaddrinfo("0.0.0.0", 0)[0][-1])
        sock.setblocking(False)
        service = service.lower()
        for attempt in range(attempts):
            records = _ask(sock, dest, query([(service, T_PTR)], attempt + 1), timeout_ms, feed)
            found = _resolve(sock, dest, service, records, timeout_ms, feed)
            if found:
                return found
        return None
    finally:
        sock.close()


def _resolve(sock, dest, service, records, timeout_ms, feed):
    instance = None
    for name, rtype, value in records:
        if rtype == T_PTR and name == service:
            instance = value.lower()
            break
    if instance is None:
        return None
    for _ in range(2):
        srv = None
        addrs = {}
        for name, rtype, value in records:
            if rtype == T_SRV and name == instance:
                srv = value
            elif rtype == T_A:
                addrs[name] = value
        if srv is not None and srv[0].lower() in addrs:
            return addrs[srv[0].lower()], srv[1]
        # Ask for what is missing (responders usually send it all as additional records).
        wanted = [(instance, T_SRV)]
        if srv is not None:
            wanted.append((srv[0], T_A))
        records = records + _ask(sock, dest, query(wanted), timeout_ms, feed)
    return None
