#!/bin/sh
# Install the Navign gateway appliance into a root file system: the same script for image/build
# (after the base root and the app's site-packages are in place) and for the pi-gen stage.
# usage: install.sh ROOT REPO   (ROOT: the root being built; REPO: this repository)
set -eu
root="${1:?usage: install.sh ROOT REPO}"
repo="${2:?usage: install.sh ROOT REPO}"
here="$(cd "$(dirname "$0")" && pwd)"
run() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# The gateway runs as its own user, in the bluetooth group (BlueZ's D-Bus policy).
if ! run getent passwd navign >/dev/null; then
    run adduser --system --group --no-create-home --home /var/lib/navign --shell /usr/sbin/nologin navign
fi
run adduser navign bluetooth >/dev/null 2>&1 || true

# The gateway's command (the venv's site-packages are installed by the caller).
mkdir -p "$root/opt/navign/venv/bin"
cat > "$root/opt/navign/venv/bin/navign-gateway" <<'LAUNCHER'
#!/opt/navign/venv/bin/python3
import sys

from navign_gateway.cli import main

sys.exit(main())
LAUNCHER
chmod 755 "$root/opt/navign/venv/bin/navign-gateway"

# Units and configuration files.
install -m 644 "$repo/gateway/systemd/navign-gateway.service" "$root/etc/systemd/system/"
(cd "$here/files" && find . -type f) | while read -r f; do
    install -D -m "$(stat -c %a "$here/files/$f")" "$here/files/$f" "$root/$f"
done

# /etc/navign is writable (the gateway wipes its used enrollment token): it is bound from /var.
mkdir -p "$root/etc/navign" "$root/var/lib/navign-etc" "$root/var/lib/navign"
chmod 700 "$root/var/lib/navign-etc" "$root/var/lib/navign"
grep -q ' /etc/navign ' "$root/etc/fstab" ||
    echo "/var/lib/navign-etc  /etc/navign  none  bind,x-systemd.requires-mounts-for=/var  0  0" >> "$root/etc/fstab"
run chown navign:navign /var/lib/navign-etc /var/lib/navign

# The provisioning folder on the boot partition: what to put there, and an example.
mkdir -p "$root/boot/firmware/navign"
install -m 644 "$here/boot/navign/README.txt" "$here/boot/navign/gateway.toml.example" \
    "$root/boot/firmware/navign/"

run systemctl enable navign-growvar.service navign-firstboot.service navign-gateway.service systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service >/dev/null 2>&1
echo "navign-gateway" > "$root/etc/hostname"
