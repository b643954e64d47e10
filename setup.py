"""ament_python package: the ROS-free core (cmirl_ros) and its ROS 2 layer (cmirl_ros.ros)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "cmirl_ros"


def _data_files():
    files = [
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/models", glob("config/models/*.yaml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
        (f"share/{PACKAGE}/config/train/models", glob("config/train/models/*.yaml")),
    ]
    for model_dir in sorted(glob("models/*/")):
        name = model_dir.rstrip("/").split("/")[-1]
        files.append((f"share/{PACKAGE}/models/{name}", glob(f"{model_dir}*")))
    return files


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=_data_files(),
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="cmirl_ros developers",
    maintainer_email="cmirl-ros@example.com",
    description="Cross-modal (camera to LiDAR map) place recognition for ROS 2: CMIRL and ModaLink.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "cmirl = cmirl_ros.cli:main",
            "localizer = cmirl_ros.ros.localizer_node:main",
        ],
    },
)
