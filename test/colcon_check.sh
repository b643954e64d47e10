#!/usr/bin/env bash
# `colcon build` of cmirl_ros in a temporary workspace, then start the installed `localizer`
# executable as launch would (managed mode: it comes up and waits for configure without a model),
# stop it with SIGINT and with SIGTERM, and require a clean exit both times.
# Usage: bash test/colcon_check.sh   (VENV=/path/to/venv to use another environment)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
WS="$(mktemp -d -t cmirl_colcon.XXXXXX)"
LOG="$WS/node.log"
trap 'rm -rf "$WS"' EXIT

export PATH="$VENV/bin:$PATH"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$REPO/config/fastdds_local.xml}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}"

cd "$WS"
echo "colcon_check: building $REPO in $WS"
colcon --log-base "$WS/log" build --paths "$REPO" --build-base "$WS/build" --install-base "$WS/install" \
  --event-handlers console_direct- >"$WS/build.log" 2>&1 || { cat "$WS/build.log"; exit 1; }

EXE="$WS/install/cmirl_ros/lib/cmirl_ros/localizer"
SHARE="$WS/install/cmirl_ros/share/cmirl_ros"
for f in "$EXE" "$SHARE/package.xml" "$SHARE/launch/localize.launch.py" "$SHARE/config/localize.yaml" \
         "$SHARE/config/fastdds_local.xml" "$WS/install/cmirl_ros/share/ament_index/resource_index/packages/cmirl_ros"; do
  [[ -e "$f" ]] || { echo "colcon_check: FAIL missing $f"; exit 1; }
done
echo "colcon_check: installed executable, package.xml, launch file, configs and ament index entry"

# The overlay as a user gets it (the venv plays the role of the underlay /opt/ros/<distro>).
set +u
# shellcheck disable=SC1091
source "$WS/install/setup.bash"
set -u
FROM="$(python -c 'import cmirl_ros; print(cmirl_ros.__file__)')"
[[ "$FROM" == "$WS/install/"* ]] || { echo "colcon_check: FAIL cmirl_ros imported from $FROM, not the install"; exit 1; }
SHARE_FOUND="$(python -c 'from ament_index_python.packages import get_package_share_directory as g; print(g("cmirl_ros"))')"
[[ "$SHARE_FOUND" == "$SHARE" ]] || { echo "colcon_check: FAIL ament index finds $SHARE_FOUND"; exit 1; }

# The installed package must find its own config/ and models/ (model names, model configs).
DIRS="$(python -c 'from cmirl_ros.paths import config_dir, models_dir; print(config_dir(), models_dir())' 2>&1)" || {
  echo "colcon_check: FAIL the installed cmirl_ros cannot find its share directory: $DIRS"; exit 1; }
for d in $DIRS; do
  [[ "$d" == "$SHARE/"* ]] || { echo "colcon_check: FAIL installed cmirl_ros uses $d, not $SHARE"; exit 1; }
done
echo "colcon_check: installed cmirl_ros finds config/ and models/ in $SHARE"

run_and_stop() {  # $1 = signal name
  "$EXE" --ros-args -p managed:=true >"$LOG" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do
    grep -q "localizer waiting for configure" "$LOG" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "localizer waiting for configure" "$LOG"; then
    echo "colcon_check: FAIL the installed localizer did not come up:"; cat "$LOG"; kill -9 "$pid" 2>/dev/null || true; exit 1
  fi
  kill -s "$1" "$pid"
  local code=0
  wait "$pid" || code=$?
  if [[ $code -ne 0 ]] || grep -q "Traceback" "$LOG"; then
    echo "colcon_check: FAIL exit code $code after SIG$1:"; cat "$LOG"; exit 1
  fi
  echo "colcon_check: installed localizer started and exited cleanly on SIG$1"
}
run_and_stop INT
run_and_stop TERM
echo "colcon_check: OK"
