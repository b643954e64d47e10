"""The core never imports ROS: only cmirl_ros/ros/ may, and the core never imports cmirl_ros/ros/.
Benchmarks have one home (cmirl_ros/benchmarks/, registry of `cmirl bench`) and no import circles."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cmirl_ros"
ROS_MODULES = {"rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_msgs", "std_srvs", "diagnostic_msgs",
               "visualization_msgs", "lifecycle_msgs", "rosgraph_msgs", "builtin_interfaces", "tf2_msgs", "cmirl_ros_interfaces",
               "launch", "launch_ros", "rcl_interfaces"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement names, at any depth of the file (lazy imports count)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            modules.add(module)
            modules |= {f"{module}.{alias.name}" for alias in node.names}
    return modules


def _core_files():
    return [path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "ros"]


def test_core_modules_do_not_import_ros():
    offenders = {}
    for path in _core_files():
        bad = {m.split(".")[0] for m in _imported_modules(path)} & ROS_MODULES
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, f"ROS imports outside cmirl_ros/ros/: {offenders}"


def test_core_modules_do_not_import_the_ros_layer():
    offenders = {}
    for path in _core_files():
        bad = {m for m in _imported_modules(path) if m == "cmirl_ros.ros" or m.startswith("cmirl_ros.ros.")}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, f"core modules importing cmirl_ros.ros: {offenders}"


def test_no_import_circles_in_the_package():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        graph[_module_name(path)] = {m for m in _imported_modules(path) if m.startswith("cmirl_ros.")}
    edges = {name: {m for m in imports if m in graph and m != name} for name, imports in graph.items()}

    def reaches(start: str, target: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            for nxt in edges[stack.pop()]:
                if nxt == target:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    # Package __init__ files re-export their submodules by design; circles through them are not counted.
    modules = [m for m in edges if not (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()]
    circles = sorted({tuple(sorted((a, b))) for a in modules for b in edges[a] if b in modules and reaches(b, a)})
    assert not circles, f"import circles: {circles}"


def test_benchmarks_have_one_home():
    from cmirl_ros.benchmarks import BENCHES

    stray = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*bench*.py")
             if p.parent.name != "benchmarks" and _module_name(p) not in BENCHES.values()]
    assert not stray, f"benchmark modules outside cmirl_ros/benchmarks/ and not registered: {stray}"


def _ours(module: str) -> bool:
    """A module of this package (cmirl_ros_interfaces is the generated message package, not ours)."""
    return module == "cmirl_ros" or module.startswith("cmirl_ros.")


def test_every_internal_import_names_an_existing_module():
    """Lazy imports inside functions fail only when run: a moved module must not leave one behind."""
    known = {_module_name(path) for path in PACKAGE.rglob("*.py")}
    missing = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and _ours(node.module or ""):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if _ours(alias.name)]
            else:
                continue
            bad = [name for name in names if name not in known]
            if bad:
                missing.setdefault(str(path.relative_to(PACKAGE)), []).extend(bad)
    assert not missing, f"imports of modules that do not exist: {missing}"
