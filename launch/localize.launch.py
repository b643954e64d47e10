"""Start the cmirl_ros localizer: `ros2 launch cmirl_ros localize.launch.py map:=/path/to/map`.

Launch arguments: params_file (default: the package's config/localize.yaml), model, map,
use_sim_time, namespace, and image_topic / camera_info_topic / points_topic, which remap the
node's default input topics. Those defaults are relative (`camera/image`), so `namespace:=robot1`
applies to them (/robot1/camera/image); a bag records absolute names (/camera/image), which the
root namespace's defaults match, and which a namespaced node reads through these remappings
(e.g. `image_topic:=/camera/image`). With image_transport compressed, the node reads
`<remapped image topic>/compressed`. Written for ROS 2 Jazzy and Kilted.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# The node's default input topics, remapped to the launch arguments of the same names.
from cmirl_ros.topics import NODE_INPUTS as INPUTS


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("cmirl_ros"), "config", "localize.yaml"]),
            description="node parameters (YAML)",
        ),
        DeclareLaunchArgument("model", default_value="cmirl_driving", description="model name or checkpoint path"),
        DeclareLaunchArgument("map", description="map directory built by `cmirl map build`"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value=topic, description=f"topic remapped onto {topic}")
        for name, topic in INPUTS.items()
    ]
    localizer = Node(
        package="cmirl_ros",
        executable="localizer",
        name="localizer",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "map": ParameterValue(LaunchConfiguration("map"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[(topic, LaunchConfiguration(name)) for name, topic in INPUTS.items()],
    )
    return LaunchDescription(arguments + [localizer])
