#!/usr/bin/env bash
# Simulator figures for docs/sim.md: throughput at full and half KITTI resolution, and the contact sheet.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
.venv/bin/cmirl bench sim --frames 24 --json bench/sim_full.json
.venv/bin/cmirl bench sim --frames 24 --width 620 --height 188 --json bench/sim_half.json
.venv/bin/cmirl sim --contact-sheet bench/sim_contact_sheet.png --sheet-frame 720
