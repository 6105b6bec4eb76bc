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

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# No recommends: a headless render needs neither the desktop integration nor the extra fonts.
ensure_apt_packages "the job templates drive them: Blender 3.x or later, ffmpeg with ffprobe" \
    blender ffmpeg

if missing; then
    echo "corral: blender, ffmpeg or ffprobe is still missing after apt-get install" >&2
    exit 1
fi
