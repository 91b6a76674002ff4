# Navign beacon app (MicroPython). APP_VERSION is this app bundle's release version (SemVer);
# an app release's manifest carries the same string.
APP_VERSION = "1.0.0"


def unload(names):
    # Forget modules of this package (by short name) so that their code can be collected: what
    # only an update needs is imported for it and unloaded after it (a beacon's heap is small).
    import gc
    import sys

    package = sys.modules[__name__]
    for name in names:
        sys.modules.pop(__name__ + "." + name, None)
        try:
            delattr(package, name)
        except (AttributeError, KeyError):  # MicroPython raises KeyError for a module
            pass
    gc.collect()
