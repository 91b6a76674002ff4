#!/bin/bash -e
# pi-gen runs this before the stage's sub-steps: start from the previous stage's root (stage2, the
# Lite system), unless this stage's root is already there (a rebuild without CLEAN=1).
if [ ! -d "${ROOTFS_DIR}" ]; then
	copy_previous
fi
