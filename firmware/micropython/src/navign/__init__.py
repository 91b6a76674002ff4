# Navign beacon app (MicroPython). APP_VERSION is this app bundle's release version (SemVer);
# an app release's manifest carries the same string.
APP_VERSION = "1.0.0"
