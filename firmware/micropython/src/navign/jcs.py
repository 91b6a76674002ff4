# Canonical JSON (RFC 8785, JCS) for what a release manifest and its envelope can hold, and a
# strict JSON parser (docs/protocol.md §1.2, §5.7).
#
# canonical(obj) -> bytes: objects with str keys, lists, str, int, True/False/None. No
#   whitespace; members sorted by their names' UTF-16 code units (exact also for keys outside
#   the BMP: see _sort_key); strings in UTF-8 with only \" \\ \b \f \n \r \t and \u00xx
#   (lowercase) escaped; integers within +-(2**53 - 1). Raises ValueError for anything else:
#   floats (a manifest never holds one: its numbers are sizes and counters), other types, keys
#   that are not strings, strings with a lone surrogate, nesting deeper than MAX_DEPTH.
# equals_canonical(obj, data) -> bool: canonical(obj) == data, compared while serialising, so
#   the canonical form is never held in memory a second time.
# parse(data, views=0) -> value: JSON text (UTF-8 bytes) parsed at least as strictly as
#   navign_proto.canonical.parse_json: RFC 8259 grammar only (no NaN/Infinity, no leading
#   zeros, no trailing data, whitespace only " \t\n\r"), duplicate object keys refused, raw
#   control characters in strings refused, \uXXXX surrogate pairs combined and lone ones
#   refused, integers beyond +-(2**53 - 1) refused, numbers that do not fit a float refused.
#   Deliberately stricter than CPython's json.loads: the bytes must be strict UTF-8 (no BOM,
#   no UTF-16/32, no encoded surrogates, no overlong forms) and nesting is limited to
#   MAX_DEPTH (CPython fails with RecursionError instead). Floats are parsed (an envelope may
#   carry one in a field the verifier ignores) with the platform's float, so on a build with
#   single-precision floats a large finite double is refused. Raises ValueError.
#   With views=N > 0, a string value (never a member name) of at least N bytes without escapes
#   is returned as a memoryview of data (validated like a str) instead of a copy: how the
#   envelope's payload is read without holding it twice. bytes input is not copied.
# MicroPython's own json module is not used: it keeps the last of duplicate keys, accepts
# invalid UTF-8 and does not combine surrogate pairs.

from micropython import const

MAX_SAFE_INTEGER = const(9007199254740991)
MAX_DEPTH = const(32)

_ESCAPES = {
    0x22: b'\\"',
    0x5C: b"\\\\",
    0x08: b"\\b",
    0x0C: b"\\f",
    0x0A: b"\\n",
    0x0D: b"\\r",
    0x09: b"\\t",
}
_HEX = b"0123456789abcdef"


# ---- serialisation ----------------------------------------------------------------------


def _sort_key(name):
    # UTF-16 code unit order. UTF-8 byte order is code point order, which differs only in that
    # UTF-16 puts U+10000..U+10FFFF (surrogates D800-DBFF) before U+E000..U+FFFF. In UTF-8 the
    # latter start with lead bytes EE and EF, the former with F0..F4: mapping the lead bytes EE
    # and EF above F4 gives UTF-16 order (continuation bytes, 80..BF, are never EE or EF).
    b = name.encode()
    if len(b) != len(name):
        b = b.replace(b"\xee", b"\xf8").replace(b"\xef", b"\xf9")
    return b


def _string(s, write):
    b = s.encode()
    if len(b) != len(s):
        # Non-ASCII: refuse a lone surrogate (no UTF-8 form; MicroPython encodes it anyway).
        i = b.find(b"\xed")
        while i >= 0:
            if i + 1 < len(b) and b[i + 1] >= 0xA0:
                raise ValueError("string with a lone surrogate")
            i = b.find(b"\xed", i + 1)
    start = 0
    write(b'"')
    for i in range(len(b)):
        c = b[i]
        if c < 0x20 or c == 0x22 or c == 0x5C:
            if i > start:
                write(b[start:i])
            e = _ESCAPES.get(c)
            if e is None:
                e = bytes((0x5C, 0x75, 0x30, 0x30, _HEX[c >> 4], _HEX[c & 15]))
            write(e)
            start = i + 1
    if start < len(b):
        write(b[start:] if start else b)
    write(b'"')


def _emit(obj, write, depth):
    if obj is None:
        write(b"null")
    elif obj is True:
        write(b"true")
    elif obj is False:
        write(b"false")
    elif isinstance(obj, str):
        _string(obj, write)
    elif type(obj) is int:
        if obj > MAX_SAFE_INTEGER or obj < -MAX_SAFE_INTEGER:
            raise ValueError("integer outside +-(2**53 - 1)")
        write(b"%d" % obj)
    elif isinstance(obj, float):
        raise ValueError("floats have no canonical form here")
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise ValueError("nested too deeply")
        write(b"[")
        first = True
        for item in obj:
            if not first:
                write(b",")
            first = False
            _emit(item, write, depth + 1)
        write(b"]")
    elif isinstance(obj, dict):
        if depth >= MAX_DEPTH:
            raise ValueError("nested too deeply")
        for k in obj:
            if not isinstance(k, str):
                raise ValueError("object keys must be strings")
        write(b"{")
        first = True
        for k in sorted(obj, key=_sort_key):
            if not first:
                write(b",")
            first = False
            _string(k, write)
            write(b":")
            _emit(obj[k], write, depth + 1)
        write(b"}")
    else:
        raise ValueError("no canonical JSON form for " + type(obj).__name__)


def canonical(obj):
    out = bytearray()
    _emit(obj, out.extend, 0)
    return bytes(out)


def equals_canonical(obj, data):
    # True when data (bytes) is exactly canonical(obj); ValueError when obj has no canonical form.
    pos = [0]
    ok = [True]

    def write(piece):
        if ok[0]:
            p = pos[0]
            if data.startswith(piece, p):
                pos[0] = p + len(piece)
            else:
                ok[0] = False

    _emit(obj, write, 0)
    return ok[0] and pos[0] == len(data)


# ---- parsing ------------------------------------------------------------------------------


def _ws(data, i):
    n = len(data)
    while i < n:
        c = data[i]
        if c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09:
            break
        i += 1
    return i


def _utf8_len(data, i, end):
    # Length of the strict UTF-8 sequence at data[i] (a byte >= 0x80), or ValueError.
    c = data[i]
    if 0xC2 <= c <= 0xDF:
        n = 2
        lo = 0x80
        hi = 0xBF
    elif 0xE0 <= c <= 0xEF:
        n = 3
        lo = 0xA0 if c == 0xE0 else 0x80
        hi = 0x9F if c == 0xED else 0xBF
    elif 0xF0 <= c <= 0xF4:
        n = 4
        lo = 0x90 if c == 0xF0 else 0x80
        hi = 0x8F if c == 0xF4 else 0xBF
    else:
        raise ValueError("invalid UTF-8")
    if i + n > end:
        raise ValueError("invalid UTF-8")
    c = data[i + 1]
    if c < lo or c > hi:
        raise ValueError("invalid UTF-8")
    for k in range(i + 2, i + n):
        c = data[k]
        if c < 0x80 or c > 0xBF:
            raise ValueError("invalid UTF-8")
    return n


def _check_text(data, mv, i, j):
    # data[i:j] holds no control character and is strict UTF-8.
    for c in mv[i:j]:
        if c < 0x20 or c >= 0x80:
            break
    else:
        return
    k = i
    while k < j:
        c = data[k]
        if c < 0x20:
            raise ValueError("control character in a string")
        if c < 0x80:
            k += 1
        else:
            k += _utf8_len(data, k, j)


def _hex4(data, i):
    if i + 4 > len(data):
        raise ValueError("truncated \\u escape")
    v = 0
    for k in range(i, i + 4):
        c = data[k]
        if 0x30 <= c <= 0x39:
            d = c - 0x30
        elif 0x61 <= c <= 0x66:
            d = c - 0x57
        elif 0x41 <= c <= 0x46:
            d = c - 0x37
        else:
            raise ValueError("bad \\u escape")
        v = (v << 4) | d
    return v


_SIMPLE = {
    0x22: 0x22,
    0x5C: 0x5C,
    0x2F: 0x2F,
    0x62: 0x08,
    0x66: 0x0C,
    0x6E: 0x0A,
    0x72: 0x0D,
    0x74: 0x09,
}


def _string_escaped(data, i):
    # A string with escapes, from just after its opening quote.
    out = bytearray()
    n = len(data)
    while True:
        if i >= n:
            raise ValueError("unterminated string")
        c = data[i]
        if c == 0x22:
            return str(out, "utf-8"), i + 1
        if c == 0x5C:
            if i + 1 >= n:
                raise ValueError("unterminated string")
            e = data[i + 1]
            if e == 0x75:
                cp = _hex4(data, i + 2)
                i += 6
                if 0xD800 <= cp <= 0xDBFF:
                    if data.startswith(b"\\u", i):
                        lo = _hex4(data, i + 2)
                        if 0xDC00 <= lo <= 0xDFFF:
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                            i += 6
                        else:
                            raise ValueError("lone surrogate")
                    else:
                        raise ValueError("lone surrogate")
                elif 0xDC00 <= cp <= 0xDFFF:
                    raise ValueError("lone surrogate")
                out.extend(chr(cp).encode())
            else:
                v = _SIMPLE.get(e)
                if v is None:
                    raise ValueError("bad escape")
                out.append(v)
                i += 2
        elif c < 0x20:
            raise ValueError("control character in a string")
        elif c < 0x80:
            out.append(c)
            i += 1
        else:
            k = _utf8_len(data, i, n)
            out.extend(data[i : i + k])
            i += k


def _string_at(data, mv, i, views):
    # A string from just after its opening quote: (value, index after the closing quote). The
    # value is a str, or with views > 0 and at least `views` bytes long without escapes, a
    # memoryview of data (no copy).
    j = data.find(b'"', i)
    if j < 0:
        raise ValueError("unterminated string")
    if data.find(b"\\", i, j) >= 0:
        return _string_escaped(data, i)
    _check_text(data, mv, i, j)
    if 0 < views <= j - i:
        return mv[i:j], j + 1
    return str(mv[i:j], "utf-8"), j + 1


def _digits(data, i):
    n = len(data)
    while i < n and 0x30 <= data[i] <= 0x39:
        i += 1
    return i


def _number_at(data, mv, i):
    n = len(data)
    j = i
    if data[j] == 0x2D:
        j += 1
    if j >= n:
        raise ValueError("bad number")
    if data[j] == 0x30:
        j += 1
    elif 0x31 <= data[j] <= 0x39:
        j = _digits(data, j + 1)
    else:
        raise ValueError("bad number")
    integer = True
    if j < n and data[j] == 0x2E:
        k = _digits(data, j + 1)
        if k == j + 1:
            raise ValueError("bad number")
        j = k
        integer = False
    if j < n and (data[j] == 0x65 or data[j] == 0x45):
        j += 1
        if j < n and (data[j] == 0x2B or data[j] == 0x2D):
            j += 1
        k = _digits(data, j)
        if k == j:
            raise ValueError("bad number")
        j = k
        integer = False
    text = str(mv[i:j], "utf-8")
    if integer:
        if j - i > 17:
            raise ValueError("integer outside +-(2**53 - 1)")
        v = int(text)
        if v > MAX_SAFE_INTEGER or v < -MAX_SAFE_INTEGER:
            raise ValueError("integer outside +-(2**53 - 1)")
        return v, j
    v = float(text)
    if v - v != 0:
        raise ValueError("number too large for a float")
    return v, j


def _value(data, mv, i, depth, ctx):
    if i >= len(data):
        raise ValueError("unexpected end of JSON")
    c = data[i]
    if c == 0x22:
        return _string_at(data, mv, i + 1, ctx[1])
    if c == 0x7B:
        if depth >= MAX_DEPTH:
            raise ValueError("nested too deeply")
        obj = {}
        i = _ws(data, i + 1)
        if i < len(data) and data[i] == 0x7D:
            return obj, i + 1
        keys = ctx[0]
        while True:
            if i >= len(data) or data[i] != 0x22:
                raise ValueError("expected a member name")
            key, i = _string_at(data, mv, i + 1, 0)
            # One str object per distinct name: a manifest repeats "path", "size", "sha256".
            key = keys.setdefault(key, key)
            if key in obj:
                raise ValueError("duplicate object key")
            i = _ws(data, i)
            if i >= len(data) or data[i] != 0x3A:
                raise ValueError("expected ':'")
            obj[key], i = _value(data, mv, _ws(data, i + 1), depth + 1, ctx)
            i = _ws(data, i)
            if i < len(data) and data[i] == 0x2C:
                i = _ws(data, i + 1)
            elif i < len(data) and data[i] == 0x7D:
                return obj, i + 1
            else:
                raise ValueError("expected ',' or '}'")
    if c == 0x5B:
        if depth >= MAX_DEPTH:
            raise ValueError("nested too deeply")
        arr = []
        i = _ws(data, i + 1)
        if i < len(data) and data[i] == 0x5D:
            return arr, i + 1
        while True:
            v, i = _value(data, mv, i, depth + 1, ctx)
            arr.append(v)
            i = _ws(data, i)
            if i < len(data) and data[i] == 0x2C:
                i = _ws(data, i + 1)
            elif i < len(data) and data[i] == 0x5D:
                return arr, i + 1
            else:
                raise ValueError("expected ',' or ']'")
    if c == 0x2D or 0x30 <= c <= 0x39:
        return _number_at(data, mv, i)
    if data.startswith(b"true", i):
        return True, i + 4
    if data.startswith(b"false", i):
        return False, i + 5
    if data.startswith(b"null", i):
        return None, i + 4
    raise ValueError("invalid JSON")


def parse(data, views=0):
    if not isinstance(data, bytes):
        data = data.encode() if isinstance(data, str) else bytes(data)
    mv = memoryview(data)
    value, i = _value(data, mv, _ws(data, 0), 0, ({}, views))
    if _ws(data, i) != len(data):
        raise ValueError("data after the JSON value")
    return value
