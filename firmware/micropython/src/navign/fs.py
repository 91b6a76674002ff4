# Small filesystem helpers for littlefs (power-safe: a rename is atomic, a file's data is durable
# once it is flushed or closed).
import json
import os


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def makedirs(path):
    part = ""
    for name in path.strip("/").split("/"):
        part += "/" + name
        if not exists(part):
            os.mkdir(part)


def rmtree(path):
    if not exists(path):
        return
    if is_dir(path):
        for name in os.listdir(path):
            rmtree(path + "/" + name)
        os.rmdir(path)
    else:
        os.remove(path)


def read_json(path, default=None, limit=4096):
    # The JSON object in `path`, or `default` when it is missing, too large or not an object.
    try:
        if size(path) > limit:
            return default
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else default
    except (OSError, ValueError):
        return default


def write_json(path, value):
    # Replace `path` atomically: a power cut leaves the old or the new content.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, path)
