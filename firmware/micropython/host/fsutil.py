# TEST-ONLY: read and write a simulated board's littlefs from the host while the board is off.
# Usage: micropython fsutil.py FLASH (put HOSTDIR | get PATH | hash DIR | ls | format)
# `put` copies a host folder into "/" (replacing files), as mpremote would on a real board.

import os
import sys

import vfs

os.putenv("NAVIGN_SIM_FLASH", sys.argv[1])
import esp32


def _mount(fmt=False):
    bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
    if fmt:
        vfs.VfsLfs2.mkfs(bdev)
    try:
        vfs.mount(vfs.VfsLfs2(bdev), "/flash")
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        vfs.mount(vfs.VfsLfs2(bdev), "/flash")


def _is_dir(path):
    return os.stat(path)[0] & 0x4000


def _put(src, dst):
    for name in os.listdir(src):
        s = src + "/" + name
        d = dst + "/" + name
        if _is_dir(s):
            try:
                os.mkdir(d)
            except OSError:
                pass
            _put(s, d)
        else:
            with open(s, "rb") as fi, open(d, "wb") as fo:
                while True:
                    chunk = fi.read(4096)
                    if not chunk:
                        break
                    fo.write(chunk)


def _walk(path, out):
    for name in sorted(os.listdir(path)):
        p = path + "/" + name
        if _is_dir(p):
            out.append(p[6:] + "/")
            _walk(p, out)
        else:
            out.append(p[6:] + " " + str(os.stat(p)[6]))


cmd = sys.argv[2]
_mount(cmd == "format")
if cmd == "put":
    _put(sys.argv[3], "/flash")
elif cmd == "get":
    import binascii

    with open("/flash" + sys.argv[3], "rb") as f:
        while True:
            chunk = f.read(1024)
            if not chunk:
                break
            sys.stdout.write(binascii.hexlify(chunk).decode())
    print()
elif cmd == "hash":
    import binascii
    import hashlib

    def _hash_tree(path):
        for name in sorted(os.listdir(path)):
            p = path + "/" + name
            if _is_dir(p):
                _hash_tree(p)
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while True:
                    chunk = f.read(1024)
                    if not chunk:
                        break
                    h.update(chunk)
            print(p[len(root) + 1 :], os.stat(p)[6], binascii.hexlify(h.digest()).decode())

    root = "/flash" + sys.argv[3].rstrip("/")
    try:
        _hash_tree(root)
    except OSError:
        pass
elif cmd == "ls":
    lines = []
    _walk("/flash", lines)
    for line in lines:
        print(line)
