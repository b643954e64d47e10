"""The core never imports ROS: only cmirl_ros/ros/ may."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cmirl_ros"
ROS_MODULES = {"rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_msgs", "std_srvs", "diagnostic_msgs",
               "visualization_msgs", "lifecycle_msgs", "rosgraph_msgs", "builtin_interfaces", "tf2_msgs", "cmirl_ros_interfaces",
               "launch", "launch_ros", "rcl_interfaces"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_do_not_import_ros():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if "ros" in path.relative_to(PACKAGE).parts[:1]:
            continue
        bad = _imported_roots(path) & ROS_MODULES
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, f"ROS imports outside cmirl_ros/ros/: {offenders}"
