#!/bin/sh
# mmdebstrap essential hook: runs after the essential packages are unpacked, before the rest.
# $1 is the root being built.
set -eu
root="$1"

# File systems by label; the root is read-only (docs/decisions.md §17).
cat > "$root/etc/fstab" <<'FSTAB'
LABEL=RASPIROOT   /                 ext4  ro,noatime,errors=remount-ro  0  1
LABEL=RASPIFIRM   /boot/firmware    vfat  rw,noatime,umask=0077,flush,fmask=0177,dmask=0077  0  2
LABEL=NAVIGNDATA  /var              ext4  rw,noatime,nodev,nosuid,x-systemd.growfs  0  2
tmpfs             /tmp              tmpfs rw,nodev,nosuid,size=64M,mode=1777  0  0
FSTAB

# The initramfs must carry fsck.ext4 for a root given by label.
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo "FSTYPE=ext4" > "$root/etc/initramfs-tools/conf.d/fstype"
echo "COMPRESS=zstd" > "$root/etc/initramfs-tools/conf.d/compress"

# One initramfs build, in the customize hook: the kernel's postinst and the trigger would each
# build one (two minutes each under emulation).
chroot "$root" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\nexit 0\n' > "$root/usr/sbin/update-initramfs"
chmod 755 "$root/usr/sbin/update-initramfs"

# raspi-firmware cannot tell the board in a chroot: say what the appliance needs.
mkdir -p "$root/etc/default"
cat > "$root/etc/default/raspi-firmware" <<'RASPI'
ROOTPART=LABEL=RASPIROOT
CONSOLES="tty0 ttyS1,115200"
CMA=0
KERNEL_ARCH=arm64
RASPI
