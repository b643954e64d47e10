#!/usr/bin/env bash
# Build the interface packages in interfaces/ (cmirl_ros_interfaces; tf2_msgs, which has no PyPI
# wheel) with colcon against the ROS 2 wheels of a virtualenv, which play the role of
# /opt/ros/<distro>. Installs a merged prefix into build/interfaces/install; cmirl_ros.ros.interfaces
# makes it importable. Usage: bash interfaces/build.sh [VENV]   (default: .venv)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-$REPO/.venv}" && pwd)"
OUT="$REPO/build/interfaces"

for tool in cmake c++ make; do
  command -v "$tool" >/dev/null || { echo "interfaces/build.sh: '$tool' not found; it is needed to build the message packages (apt-get install cmake g++ make)" >&2; exit 1; }
done
[[ -x "$VENV/bin/colcon" ]] || { echo "interfaces/build.sh: no colcon in $VENV (run make setup)" >&2; exit 1; }

# The wheels install a ROS prefix into the venv itself (share/, lib/, include/ beside bin/).
# AMENT_PREFIX_PATH: rosidl finds the typesupports through the ament index there.
export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"

rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
if ! colcon --log-base "$OUT/log" build --base-paths "$REPO/interfaces" --build-base "$OUT/build" \
    --install-base "$OUT/install" --merge-install --event-handlers console_direct- \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >"$OUT/build.log" 2>&1; then
  grep -v '^\[ *[0-9]*%\]' "$OUT/build.log" | tail -40 >&2
  echo "interfaces/build.sh: colcon build failed; full log in $OUT/build.log" >&2
  exit 1
fi
touch "$OUT/install/.built"
echo "interfaces/build.sh: built $(ls "$OUT/install/share/ament_index/resource_index/rosidl_interfaces" | tr '\n' ' ')in $(( $(date +%s) - start )) s -> $OUT/install"
