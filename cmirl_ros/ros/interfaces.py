"""ROS message classes: the generated packages made importable, and type names resolved safely.

ROS 2 from PyPI has no tf2_msgs wheel, and our LoopClosure message has none either: `make interfaces`
(interfaces/build.sh) generates both with colcon from their .msg files into build/interfaces/install.
A package that is importable already (a sourced ROS workspace) is used as it is.

The build's libraries are not on the loader path of a running process, and the typesupport
dispatch dlopens them by name when a publisher or subscription is created; loading them here with
RTLD_GLOBAL first makes both the extension modules' and the dispatch's look-ups find them.

Type names that come from outside (a bag's metadata, the live graph) resolve only to message types
listed in an ament index (`share/ament_index/resource_index/rosidl_interfaces/<package>`, under the
ament prefixes, this Python's prefix where the ROS wheels install, and the generated packages'
prefix): importing `<package>.msg` for whatever a bag names would import arbitrary modules.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import os
import sys
import threading
from pathlib import Path

PACKAGES = ("tf2_msgs", "cmirl_ros_interfaces")
PREFIX_ENV = "CMIRL_INTERFACES_PREFIX"
_DEFAULT_PREFIX = Path(__file__).resolve().parents[2] / "build" / "interfaces" / "install"
_lock = threading.Lock()
_ready = False


class InterfacesNotBuilt(ImportError):
    """The generated message packages are neither importable nor built."""


def interfaces_prefix() -> Path:
    """Install prefix of the generated packages: $CMIRL_INTERFACES_PREFIX, else the source tree's build."""
    return Path(os.environ.get(PREFIX_ENV) or _DEFAULT_PREFIX)


def _site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _load_libraries(prefix: Path, package: str) -> None:
    # The other libraries of a package need its rosidl_generator_c library: load that one first.
    libraries = sorted((prefix / "lib").glob(f"lib{package}__*.so"), key=lambda p: "__rosidl_generator_c." not in p.name)
    for library in libraries:
        try:
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise InterfacesNotBuilt(f"{library}: cannot load ({e}); rebuild with `make interfaces`") from None


def _add_from_prefix(prefix: Path, packages: list[str]) -> None:
    site = _site_packages(prefix)
    absent = [p for p in packages if not (site / p / "msg" / "__init__.py").is_file()]
    if absent:
        raise InterfacesNotBuilt(
            f"the message package(s) {', '.join(absent)} are not built in {prefix}: run `make interfaces` "
            f"(colcon-builds interfaces/ into build/interfaces/install), or set {PREFIX_ENV} to an install prefix "
            "that holds them")
    for package in packages:
        _load_libraries(prefix, package)
    sys.path.append(str(site))
    importlib.invalidate_caches()


def ensure_interfaces() -> None:
    """Make tf2_msgs and cmirl_ros_interfaces importable; InterfacesNotBuilt says how to build them."""
    global _ready
    with _lock:
        if _ready:
            return
        missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            _add_from_prefix(interfaces_prefix(), missing)
        _ready = True


def tf_message_type():
    """tf2_msgs/msg/TFMessage (what /tf and /tf_static carry)."""
    ensure_interfaces()
    from tf2_msgs.msg import TFMessage

    return TFMessage


def loop_closure_type():
    """cmirl_ros_interfaces/msg/LoopClosure."""
    ensure_interfaces()
    from cmirl_ros_interfaces.msg import LoopClosure

    return LoopClosure


def candidates_type():
    """cmirl_ros_interfaces/msg/Candidates."""
    ensure_interfaces()
    from cmirl_ros_interfaces.msg import Candidates

    return Candidates


INTERFACE_INDEX = Path("share") / "ament_index" / "resource_index" / "rosidl_interfaces"


def _prefixes() -> list[Path]:
    ament = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return ament + [Path(sys.prefix), interfaces_prefix()]


@functools.lru_cache(maxsize=1)
def installed_message_types() -> frozenset[str]:
    """Every `package/msg/Name` that an installed interface package declares."""
    types = set()
    for prefix in _prefixes():
        index = prefix / INTERFACE_INDEX
        if not index.is_dir():
            continue
        for package in index.iterdir():
            for line in package.read_text().splitlines():
                kind, _, file_name = line.strip().partition("/")
                if kind == "msg" and file_name.endswith((".msg", ".idl")):
                    types.add(f"{package.name}/msg/{Path(file_name).stem}")
    return frozenset(types)


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class; None for anything that is not a message
    type of an installed interface package (nothing else is imported)."""
    if msgtype not in installed_message_types():
        return None
    package, _, name = msgtype.split("/")
    if package in PACKAGES:
        try:
            ensure_interfaces()
        except InterfacesNotBuilt:
            return None
    return getattr(importlib.import_module(f"{package}.msg"), name, None)


def interfaces_typestore():
    """The rosbags typestore of bags (`cmirl_ros.datasets.bag.typestore`) with our generated packages'
    messages registered from their installed .msg files (<prefix>/share/<package>/msg), so that a
    recorder can write, and a reader parse, what the node publishes in them (LoopClosure, ...)."""
    from rosbags.typesys import get_types_from_msg

    from cmirl_ros.datasets.bag import typestore

    ensure_interfaces()
    store, types = typestore(), {}
    for package in PACKAGES:
        # <prefix>/lib/pythonX.Y/site-packages/<package>/__init__.py -> <prefix>/share/<package>/msg
        share = Path(importlib.util.find_spec(package).origin).parents[4] / "share" / package / "msg"
        for definition in sorted(share.glob("*.msg")):
            name = f"{package}/msg/{definition.stem}"
            if name not in store.fielddefs:
                types.update(get_types_from_msg(definition.read_text(), name))
    store.register(types)
    return store
