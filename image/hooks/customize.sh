#!/bin/sh
# mmdebstrap customize hook: runs when every package is installed. $1 is the root.
set -eu
root="$1"
run() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# The one initramfs build; raspi-firmware's hook then copies kernel and initrd to /boot/firmware.
rm -f "$root/usr/sbin/update-initramfs"
run dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
kver=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -V | tail -n 1)
run update-initramfs -c -k "$kver"
run env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$kver"

# Every image would otherwise ship the same SSH host keys and machine id.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# Caches and logs of the build.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old

# The root is mounted read-only from the start (docs/decisions.md §17).
sed -i -e 's/\(^\| \)rw\( \|$\)/\1ro\2/' "$root/boot/firmware/cmdline.txt"
grep -q '\(^\| \)ro\( \|$\)' "$root/boot/firmware/cmdline.txt" ||
    sed -i -e '1s/$/ ro/' "$root/boot/firmware/cmdline.txt"
