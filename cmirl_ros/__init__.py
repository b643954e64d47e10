"""cmirl_ros: cross-modal (camera -> LiDAR map) place recognition.

The package root and every subpackage except ``cmirl_ros.ros`` are ROS-free.
"""

__version__ = "0.1.0"
