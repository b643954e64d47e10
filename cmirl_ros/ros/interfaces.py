"""The generated message packages, tf2_msgs and cmirl_ros_interfaces, made importable.

ROS 2 from PyPI has no tf2_msgs wheel, and our LoopClosure message has none either: `make interfaces`
(interfaces/build.sh) generates both with colcon from their .msg files into build/interfaces/install.
A package that is importable already (a sourced ROS workspace) is used as it is.

The build's libraries are not on the loader path of a running process, and the typesupport
dispatch dlopens them by name when a publisher or subscription is created; loading them here with
RTLD_GLOBAL first makes both the extension modules' and the dispatch's look-ups find them.
"""
from __future__ import annotations

import ctypes
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
