#!/bin/bash -e
# pi-gen sub-step, run on the build host: the Navign gateway into ${ROOTFS_DIR}, the same way as
# step 2 of image/build (the app layer). The gateway and its dependencies are aarch64 wheels,
# installed from the host with uv (nothing is compiled under emulation) into /opt/navign/venv, a
# venv made by the image's own python3. Then image/install.sh does the rest (user, launcher,
# units, /etc/navign, enabled services), as it does for image/build.
#
# Environment (pi-gen runs this as a child process: `export` them in pi-gen's config):
#   NAVIGN_REPO  this repository (default: the one this stage lives in, four folders up)
#   UV           the uv program (default: uv on PATH, else $NAVIGN_REPO/.bootstrap/bin/uv)
# pi-gen sets ROOTFS_DIR (the root being built) and STAGE_WORK_DIR (this stage's work folder).
set -euo pipefail

fail() {
    echo "stage-navign: error: $*" >&2
    exit 1
}

root="${ROOTFS_DIR:?not set: run this stage through pi-gen build.sh}"
work="${STAGE_WORK_DIR:?not set: run this stage through pi-gen build.sh}/navign"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${NAVIGN_REPO:-$here/../../../..}"
[[ -x $repo/image/install.sh && -f $repo/uv.lock ]] ||
    fail "NAVIGN_REPO ($repo) is not the navign-edge repository (no image/install.sh or uv.lock)"
repo="$(cd "$repo" && pwd)"
uv="${UV:-$(command -v uv || true)}"
[[ -n $uv ]] || uv="$repo/.bootstrap/bin/uv"
[[ -x $uv ]] || fail "uv is not installed: put it on root's PATH or export UV=/path/to/uv in pi-gen's config"

# The wheels are aarch64: a 32-bit Raspberry Pi OS (pi-gen's master branch) cannot run them.
arch="$(chroot "$root" dpkg --print-architecture)"
[[ $arch == arm64 ]] || fail "the root is $arch, the gateway's wheels are aarch64: build with pi-gen's arm64 branch"

# --- as image/build, step 2 -----------------------------------------------------------------
pyver="$(chroot "$root" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# A rebuild without CLEAN=1 keeps this stage's root: never install over an older venv.
rm -rf "$root/opt/navign/venv"
chroot "$root" env -i PATH=/usr/bin:/bin /usr/bin/python3 -m venv --without-pip /opt/navign/venv
site="$root/opt/navign/venv/lib/python$pyver/site-packages"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$work/uv-cache}" UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"
rm -rf "$work/dist"
mkdir -p "$work"
for package in navign-proto navign-gateway; do
    (cd "$repo" && "$uv" build --quiet --package "$package" --wheel --out-dir "$work/dist") ||
        fail "could not build the $package wheel"
done
(cd "$repo" && "$uv" export --quiet --frozen --package navign-gateway --no-dev \
    --no-emit-workspace --no-hashes --format requirements-txt) > "$work/requirements.txt" ||
    fail "could not export the gateway's requirements from uv.lock"
"$uv" pip install --quiet --target "$site" --python-platform aarch64-manylinux_2_28 \
    --python-version "$pyver" --only-binary :all: --no-compile \
    -r "$work/requirements.txt" "$work"/dist/*.whl ||
    fail "could not install the gateway's aarch64 wheels"
# --target writes scripts with this host's interpreter: the appliance starts the gateway itself.
rm -rf "${site:?}/bin"
"$repo/image/install.sh" "$root" "$repo"
echo "stage-navign: installed the gateway (Python $pyver) into $root"
