#!/bin/bash -e
# pi-gen sub-step, run on the build host after image/install.sh: where Raspberry Pi OS Lite does
# by default what the appliance does its own way, keep the appliance's way (the one image/build
# ships, and that install.sh and image/files are written for). See image/pi-gen/README.md.
set -euo pipefail

root="${ROOTFS_DIR:?not set: run this stage through pi-gen build.sh}"
run() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
has_unit() { [[ -e $root/usr/lib/systemd/system/$1 || -e $root/lib/systemd/system/$1 ]]; }

# One network stack: systemd-networkd (image/files/etc/systemd/network), systemd-resolved and
# wpa_supplicant@wlan0, which install.sh and navign-firstboot enable. Raspberry Pi OS's
# NetworkManager (and dhcpcd on older branches) would run DHCP on the same interfaces.
for unit in NetworkManager.service NetworkManager-wait-online.service dhcpcd.service; do
    if has_unit "$unit"; then
        run systemctl mask "$unit" >/dev/null
    fi
done
# systemd-resolved's package makes /etc/resolv.conf a link to its stub; pi-gen's export-image
# (02-network) installs a plain resolv.conf over it after this stage. Put the link back at boot.
mkdir -p "$root/etc/tmpfiles.d"
echo "L+ /etc/resolv.conf - - - - ../run/systemd/resolve/stub-resolv.conf" > "$root/etc/tmpfiles.d/navign-resolv.conf"
chmod 644 "$root/etc/tmpfiles.d/navign-resolv.conf"

# SSH as on the Debian image: ssh.service enabled, started only when the boot partition holds a
# file named ssh (install.sh's drop-in, ssh.service.d/navign.conf). pi-gen disables ssh unless
# ENABLE_SSH=1, and Raspberry Pi OS's sshswitch.service would enable it and delete that file, so
# the drop-in's condition would fail from then on and navign-firstboot would not install
# navign/authorized_keys. Masking a unit the image does not have is harmless.
run systemctl enable ssh.service >/dev/null 2>&1
run systemctl mask sshswitch.service >/dev/null
