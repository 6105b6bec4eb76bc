#!/usr/bin/env bash
# Installs the renderers the job templates drive (Blender, and ffmpeg with ffprobe) from the
# distribution's packages when any is missing; exits non-zero, saying why, when it cannot.
set -euo pipefail

missing() {
    local program
    for program in blender ffmpeg ffprobe; do
        command -v "$program" >/dev/null || return 0
    done
    return 1
}

if ! missing; then
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "corral: blender and ffmpeg are needed and this is not root, with no sudo." >&2
        echo "        Install them (Debian/Ubuntu: sudo apt-get install blender ffmpeg) and run again." >&2
        exit 1
    fi
    sudo="sudo"
fi
if ! command -v apt-get >/dev/null; then
    echo "corral: blender and ffmpeg are needed and apt-get is not available: install them" >&2
    echo "        (Blender 3.x or later, ffmpeg with ffprobe) and run again." >&2
    exit 1
fi

echo "corral: installing blender and ffmpeg (apt-get install blender ffmpeg)"
# No recommends: a headless render needs neither the desktop integration nor the extra fonts.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    blender ffmpeg </dev/null >/dev/null

if missing; then
    echo "corral: blender, ffmpeg or ffprobe is still missing after apt-get install" >&2
    exit 1
fi
