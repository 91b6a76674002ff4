# Release versions: Semantic Versioning 2.0.0, as docs/protocol.md §6.6 and
# navign_proto.versions accept them, compared by SemVer precedence.
#
# parse(v) -> (major, minor, patch, prerelease): prerelease is a tuple of its identifiers
#   (ints for numeric ones, strs otherwise), () for a release. Raises ValueError for anything
#   else: longer than 64 characters, build metadata ("+..."), leading zeros ("01.2.3",
#   "1.0.0-01"), empty identifiers ("1.2.3-", "1.2.3-a..b"), a prefix ("v1.2.3"), whitespace,
#   characters outside [0-9A-Za-z-] in a pre-release, non-ASCII digits.
# compare(a, b) -> -1, 0 or 1 as a precedes, equals or follows b (1.2.3 < 1.10.0,
#   2.0.0-rc.1 < 2.0.0, numeric identifiers < alphanumeric ones, alphanumerics by ASCII order,
#   a shorter pre-release list first when it is a prefix of the other).
# triple(v) -> (major, minor, patch, is_prerelease).

MAX_LENGTH = 64

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"


def _is_digits(s):
    return bool(s) and all("0" <= c <= "9" for c in s)


def _number(s, v):
    # A numeric identifier: ASCII digits, no leading zero.
    if not _is_digits(s) or (len(s) > 1 and s[0] == "0"):
        raise ValueError("not a semantic version: " + v)
    return int(s)


def parse(v):
    if not isinstance(v, str):
        raise ValueError("a version is a string")
    if len(v) > MAX_LENGTH:
        raise ValueError("version longer than 64 characters")
    if "+" in v:
        raise ValueError("build metadata (+...) is not allowed in release versions")
    dash = v.find("-")
    core = v if dash < 0 else v[:dash]
    parts = core.split(".")
    if len(parts) != 3:
        raise ValueError("not a semantic version (MAJOR.MINOR.PATCH): " + v)
    major = _number(parts[0], v)
    minor = _number(parts[1], v)
    patch = _number(parts[2], v)
    pre = ()
    if dash >= 0:
        ids = []
        for ident in v[dash + 1 :].split("."):
            if not ident:
                raise ValueError("empty pre-release identifier: " + v)
            for c in ident:
                if c not in _ALNUM:
                    raise ValueError("pre-release identifiers are [0-9A-Za-z-]: " + v)
            if _is_digits(ident):
                ids.append(_number(ident, v))
            else:
                ids.append(ident)
        pre = tuple(ids)
    return major, minor, patch, pre


def _cmp(a, b):
    return (a > b) - (a < b)


def compare(a, b):
    va = parse(a)
    vb = parse(b)
    for i in range(3):
        c = _cmp(va[i], vb[i])
        if c:
            return c
    pa = va[3]
    pb = vb[3]
    if not pa or not pb:
        # A release follows its pre-releases.
        return _cmp(len(pb), len(pa)) if (pa or pb) else 0
    for i in range(min(len(pa), len(pb))):
        x = pa[i]
        y = pb[i]
        xi = isinstance(x, int)
        yi = isinstance(y, int)
        if xi and yi:
            c = _cmp(x, y)
        elif xi:
            c = -1
        elif yi:
            c = 1
        else:
            c = _cmp(x, y)
        if c:
            return c
    return _cmp(len(pa), len(pb))


def triple(v):
    major, minor, patch, pre = parse(v)
    return major, minor, patch, bool(pre)
