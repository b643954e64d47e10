"""ROS message classes by type name, resolved from the installed interface packages only.

Type names come from outside (a bag's metadata, the live graph): importing `<package>.msg`
for whatever a bag names would import arbitrary modules. Only the message types listed in the
ament index (`share/ament_index/resource_index/rosidl_interfaces/<package>`, under the ament
prefixes and this Python's prefix, where the ROS wheels install) are ever imported.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path

INTERFACE_INDEX = Path("share") / "ament_index" / "resource_index" / "rosidl_interfaces"


def _prefixes() -> list[Path]:
    ament = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return ament + [Path(sys.prefix)]


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
    return getattr(importlib.import_module(f"{package}.msg"), name, None)
