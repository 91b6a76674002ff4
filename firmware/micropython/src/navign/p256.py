# ECDSA P-256 / SHA-256 signature verification in pure MicroPython (docs/protocol.md §2.1).
#
# verify(point, digest, sig) -> bool
#   point:  the signer's public key, the 65-byte uncompressed point 04 || X || Y
#   digest: the 32-byte SHA-256 of the signed message (the caller hashes, exactly once)
#   sig:    the raw 64-byte r || s (never DER)
# It never raises on hostile input: a public key that is not a valid P-256 point (wrong length,
# no 0x04 prefix, a coordinate >= p, not on the curve), a digest that is not 32 bytes, a
# signature that is not 64 bytes, r or s equal to 0 or >= n, or a sum at infinity all give False.
# Both low-S and high-S signatures verify, as ECDSA defines. valid_point(point) -> bool checks a
# public key alone (for loading trusted keys).
#
# How: u1 = e/s, u2 = r/s (mod n); R = u1*G + u2*Q in one pass of 256 doublings (Shamir's
# trick), both scalars in width-w NAF (G: w=5 with 1G, 3G, .. 15G; Q: w=4 with 1Q, .. 7Q), the
# tables in affine coordinates so every addition is a mixed Jacobian + affine one; the curve's
# a = -3 doubling. The x-coordinate is compared as r * Z^2 == X (mod p), without an inversion.
# Inverses use the extended Euclidean algorithm (no 3-argument pow, which some builds lack).
# The table for G is a constant (8 points, about 1 KiB; the tests check every signature against
# OpenSSL, which a wrong entry would fail), built when the module loads, so it sits with the
# module's own objects rather than among a verification's temporaries. verify() reuses two
# module-level digit buffers: it is not re-entrant (nothing in the firmware calls it from an
# interrupt or a thread).

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B

_G_WINDOW = 5

# 1G, 3G, 5G, .., 15G in affine coordinates (x, y): the odd multiples wNAF digits of width 5
# use. Constants, so that they are built when the module loads, with no temporaries.
_G_TABLE = (
    (  # 1G: the generator
        0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
        0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    ),
    (  # 3G
        0x5ECBE4D1A6330A44C8F7EF951D4BF165E6C6B721EFADA985FB41661BC6E7FD6C,
        0x8734640C4998FF7E374B06CE1A64A2ECD82AB036384FB83D9A79B127A27D5032,
    ),
    (  # 5G
        0x51590B7A515140D2D784C85608668FDFEF8C82FD1F5BE52421554A0DC3D033ED,
        0xE0C17DA8904A727D8AE1BF36BF8A79260D012F00D4D80888D1D0BB44FDA16DA4,
    ),
    (  # 7G
        0x8E533B6FA0BF7B4625BB30667C01FB607EF9F8B8A80FEF5B300628703187B2A3,
        0x73EB1DBDE03318366D069F83A6F5900053C73633CB041B21C55E1A86C1F400B4,
    ),
    (  # 9G
        0xEA68D7B6FEDF0B71878938D51D71F8729E0ACB8C2C6DF8B3D79E8A4B90949EE0,
        0x2A2744C972C9FCE787014A964A8EA0C84D714FEAA4DE823FE85A224A4DD048FA,
    ),
    (  # 11G
        0x3ED113B7883B4C590638379DB0C21CDA16742ED0255048BF433391D374BC21D1,
        0x9099209ACCC4C8A224C843AFA4F4C68A090D04DA5E9889DAE2F8EEFCE82A3740,
    ),
    (  # 13G
        0x177C837AE0AC495A61805DF2D85EE2FC792E284B65EAD58A98E15D9D46072C01,
        0x63BB58CD4EBEA558A24091ADB40F4E7226EE14C3A1FB4DF39C43BBE2EFC7BFD8,
    ),
    (  # 15G
        0xF0454DC6971ABAE7ADFB378999888265AE03AF92DE3A0EF163668C63E59B9D5F,
        0xB5B93EE3592E2D1F4E6594E51F9643E62A3B21CE75B5FA3F47E59CDE0D034F36,
    ),
)

_Q_WINDOW = 4

# wNAF digits of u1 and u2, least significant first; a digit d is stored as d & 0xFF.
_naf1 = bytearray(257)
_naf2 = bytearray(257)


def _inverse(a, m):
    # a^-1 mod m for 0 < a < m, m prime (extended Euclid on the remainders).
    u = a % m
    v = m
    x1 = 1
    x2 = 0
    while u > 1:
        q, r = divmod(v, u)
        v = u
        u = r
        x1, x2 = x2 - q * x1, x1
    if u != 1:
        raise ValueError("not invertible")
    return x1 % m


def _double(x, y, z):
    # Jacobian doubling for a = -3 (dbl-2001-b): 3M + 5S.
    p = _P
    if not z or not y:
        return 0, 1, 0
    delta = z * z % p
    gamma = y * y % p
    beta = x * gamma % p
    alpha = 3 * (x - delta) * (x + delta) % p
    x3 = (alpha * alpha - 8 * beta) % p
    z3 = 2 * y * z % p
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % p
    return x3, y3, z3


def _add_affine(x1, y1, z1, x2, y2):
    # Jacobian (x1, y1, z1) + affine (x2, y2) (madd-2004-hmv): 8M + 3S. Handles infinity and
    # the doubling and cancelling cases, which a hostile public key can make happen.
    p = _P
    if not z1:
        return x2, y2, 1
    zz = z1 * z1 % p
    h = (x2 * zz - x1) % p
    r = (y2 * zz % p * z1 - y1) % p
    if not h:
        if not r:
            return _double(x1, y1, z1)
        return 0, 1, 0
    hh = h * h % p
    hhh = h * hh % p
    v = x1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    y3 = (r * (v - x3) - y1 * hhh) % p
    z3 = z1 * h % p
    return x3, y3, z3


def _odd_multiples(x, y, count):
    # [(x, y) of 1P, 3P, .., (2*count - 1)P] in affine coordinates: 2P in affine (one
    # inversion), the rest by mixed additions, brought back to affine with one batch inversion.
    p = _P
    lam = (3 * (x * x - 1)) * _inverse(2 * y, p) % p
    x2 = (lam * lam - 2 * x) % p
    y2 = (lam * (x - x2) - y) % p
    jac = []
    px, py, pz = x, y, 1
    for _ in range(count - 1):
        px, py, pz = _add_affine(px, py, pz, x2, y2)
        if not pz:
            raise ValueError("small order point")
        jac.append((px, py, pz))
    # Batch inversion of the z's (Montgomery's trick).
    prefix = []
    acc = 1
    for _, _, pz in jac:
        prefix.append(acc)
        acc = acc * pz % p
    inv = _inverse(acc, p)
    out = [None] * count
    out[0] = (x, y)
    for i in range(count - 2, -1, -1):
        px, py, pz = jac[i]
        zi = inv * prefix[i] % p
        inv = inv * pz % p
        zi2 = zi * zi % p
        out[i + 1] = (px * zi2 % p, py * zi2 % p * zi % p)
    return out


def _wnaf(k, w, out):
    # Width-w NAF of k >= 0 into out (zeroed first); returns the number of digits.
    for i in range(len(out)):
        out[i] = 0
    full = 1 << w
    half = full >> 1
    mask = full - 1
    i = 0
    while k:
        if k & 1:
            d = k & mask
            if d >= half:
                d -= full
            k -= d
            out[i] = d & 0xFF
        k >>= 1
        i += 1
    return i


def _on_curve(x, y):
    p = _P
    return x < p and y < p and (y * y - (x * x * x - 3 * x + _B)) % p == 0


def _decode_point(point):
    if not isinstance(point, (bytes, bytearray)) or len(point) != 65 or point[0] != 4:
        return None
    x = int.from_bytes(point[1:33], "big")
    y = int.from_bytes(point[33:65], "big")
    if not _on_curve(x, y):
        return None
    return x, y


def valid_point(point):
    # True when point is the 65-byte uncompressed form of a point on P-256 (never infinity:
    # it has no uncompressed form; the cofactor is 1, so every curve point is in the group).
    return _decode_point(point) is not None


def verify(point, digest, sig):
    q = _decode_point(point)
    if q is None:
        return False
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
        return False
    if not isinstance(sig, (bytes, bytearray)) or len(sig) != 64:
        return False
    n = _N
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < n and 0 < s < n):
        return False
    e = int.from_bytes(digest, "big")
    w = _inverse(s, n)
    u1 = e * w % n
    u2 = r * w % n

    gt = _G_TABLE
    qt = _odd_multiples(q[0], q[1], 1 << (_Q_WINDOW - 2))
    naf1 = _naf1
    naf2 = _naf2
    top = max(_wnaf(u1, _G_WINDOW, naf1), _wnaf(u2, _Q_WINDOW, naf2))

    p = _P
    x = 0
    y = 1
    z = 0
    for i in range(top - 1, -1, -1):
        if z:
            x, y, z = _double(x, y, z)
        d = naf1[i]
        if d:
            if d < 128:
                px, py = gt[d >> 1]
                x, y, z = _add_affine(x, y, z, px, py)
            else:
                px, py = gt[(256 - d) >> 1]
                x, y, z = _add_affine(x, y, z, px, p - py)
        d = naf2[i]
        if d:
            if d < 128:
                px, py = qt[d >> 1]
                x, y, z = _add_affine(x, y, z, px, py)
            else:
                px, py = qt[(256 - d) >> 1]
                x, y, z = _add_affine(x, y, z, px, p - py)
    if not z:
        return False
    # x(R) mod n == r, i.e. X / Z^2 == r or r + n (mod p): r + n < p is possible.
    zz = z * z % p
    if (r * zz - x) % p == 0:
        return True
    r += n
    return r < p and (r * zz - x) % p == 0
