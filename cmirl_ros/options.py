"""Every option of the `localizer` node and of the offline localization commands, declared once.

An `Option` is a name, a default (the node's; `cli_default` where the flag keeps another), a one-line
help, and the checks its value must pass (choices, bounds, length); a `Section` groups options and
says where they appear (`views`): "node" (the node's ROS parameters and config/localize.yaml) and/or
"cli" (flags of `cmirl localize`, and of `cmirl eval` for the verification ones). Generated from this tree:
- the node's parameters with their descriptions (`node_options`) and their checks (`check_parameters`);
- config/localize.yaml (`localize_yaml`, written by `cmirl config localize-yaml --out ...`;
  a test fails when the committed file differs);
- the flags (`add_cli_arguments`): the option's name with dashes, its default, its help, its checks;
- the config dataclasses, from node parameters or parsed flags alike (`localizer_config`, `sequence_config`).
No heavy imports: `cmirl --help` builds its flags from here.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from cmirl_ros.topics import NODE_INPUTS

NODE, CLI = "node", "cli"
SEQUENCE_VERIFY = "sequence"  # `--verify sequence`: checks the localizer's top matches, not a stage of it
AUTO_VERIFY = "auto"  # registration when the live scan is used, else sequence (`resolve_verify`)


def _stage_choices(kind: str) -> Callable[[], list[str]]:
    def names() -> list[str]:
        from cmirl_ros.localization.stages import stage_names

        return [name for name in stage_names(kind) if not (kind == "retrieve" and name == "none")]
    return names


def _verify_choices() -> list[str]:
    return [AUTO_VERIFY, *_stage_choices("verify")(), SEQUENCE_VERIFY]


def resolve_verify(verify: str, use_scan: bool) -> str:
    """The verifier `verify` stands for: `auto` is registration with the live scan (the refined pose),
    else sequence (image-only matches confirmed by the motion); any other name is itself."""
    if verify != AUTO_VERIFY:
        return verify
    return "registration" if use_scan else SEQUENCE_VERIFY


def _rerank_choices() -> list[str]:
    from cmirl_ros.localization.rerank import RERANKERS

    return RERANKERS.names()


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    choices: tuple | Callable[[], Sequence] | None = None  # a callable: a registry's names, read when checked
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    length: int | None = None  # a list of exactly this many values
    field: str | None = ""  # its name in the section's config dataclass: "" the same, None not in it
    views: tuple[str, ...] | None = None  # narrower than its section's
    cli_default: Any = None  # the flag's default where it differs from the node's (None: the same)

    def problem(self, value) -> str | None:
        """None when `value` passes the checks, else what is wrong with it (to follow the option's name)."""
        if self.choices is not None:
            choices = list(self.choices if isinstance(self.choices, tuple) else self.choices())
            if value not in choices:
                return f"is '{value}', expected one of: {', '.join(map(str, choices))}"
        if self.length is not None and len(value) != self.length:
            return f"needs {self.length} values, got {list(value)}"
        for bound, fits, word in ((self.at_least, lambda b: value >= b, ">="), (self.above, lambda b: value > b, ">"),
                                  (self.at_most, lambda b: value <= b, "<=")):
            if bound is not None and not fits(bound):
                return f"must be {word} {bound:g}, got {value}"
        return None

    def constraints(self) -> str:
        """The checks in words, e.g. 'one of: raw, compressed' or '>= 1'."""
        parts = []
        if self.choices is not None:
            choices = self.choices if isinstance(self.choices, tuple) else self.choices()
            parts.append(f"one of: {', '.join(map(str, choices))}")
        parts += [f"{word} {bound:g}" for bound, word in ((self.at_least, ">="), (self.above, ">"), (self.at_most, "<="))
                  if bound is not None]
        if self.length is not None:
            parts.append(f"{self.length} values")
        return "; ".join(parts)

    def default_in(self, view: str) -> Any:
        return self.cli_default if view == CLI and self.cli_default is not None else self.default

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Section:
    name: str
    title: str  # one line: the yaml's comment above the section, the --help group's title
    views: tuple[str, ...]
    options: tuple[Option, ...]

    def options_in(self, view: str) -> list[Option]:
        return [o for o in self.options if view in (o.views or self.views)]


SECTIONS = (
    Section("node", "model and map", (NODE,), (
        Option("managed", False, "true: lifecycle node, driven by configure/activate like a Nav2 server"),
        Option("model", "cmirl_driving", "shipped model name (models/NAME), checkpoint path, or model config name"),
        Option("map", "", "map directory from `cmirl map build` (required)"),
        Option("device", "auto", "auto (CUDA when available, else CPU), cuda, cpu"),
        Option("num_threads", 0, "torch CPU threads; 0 = torch's default", at_least=0),
    )),
    Section("inputs", "inputs; relative topics, so a namespace applies (robot1 -> /robot1/camera/image)", (NODE,), (
        Option("image_topic", NODE_INPUTS["image_topic"], "sensor_msgs/Image (image_transport compressed: IMAGE_TOPIC/compressed)"),
        Option("camera_info_topic", NODE_INPUTS["camera_info_topic"], "sensor_msgs/CameraInfo of the images"),
        Option("points_topic", NODE_INPUTS["points_topic"], "sensor_msgs/PointCloud2 of the LiDAR (use_scan)"),
        Option("image_transport", "raw", "raw (sensor_msgs/Image on image_topic) or compressed (CompressedImage on "
               "image_topic/compressed)", choices=("raw", "compressed")),
        Option("qos", "sensor_data", "inputs' default QoS: sensor_data (best effort, shallow) or reliable; per input: "
               "qos_overrides./TOPIC.subscription.{reliability,depth,history} (ROS's QoS overrides)",
               choices=("sensor_data", "reliable")),
        Option("use_camera_info", True, "CameraInfo: rectify images (D, R, P) and use the rectified intrinsics"),
        Option("use_scan", False, "fuse a live LiDAR scan with the image (complete image + scan sets only)"),
        Option("calib_file", "", "KITTI calib.txt (Tr, P2) for use_scan; empty: calibration from /tf_static, /tf + CameraInfo"),
        Option("sync_slop", 0.05, "s: largest image/scan stamp difference that still pairs them", at_least=0),
        Option("sync_queue_size", 10, "recent messages kept per input for out-of-order synchronisation", at_least=1),
        Option("scan_timeout", 1.0, "s: with use_scan, a LiDAR silent this long puts /diagnostics at ERROR", above=0),
        Option("fallback_image_only", False, "with use_scan, answer from images alone while the LiDAR is silent"),
        Option("max_query_rate", 0.0, "Hz: at most this many queries per second; 0 = as fast as inference allows",
               at_least=0),
    )),
    Section("localizer", "retrieval (LocalizerConfig)", (NODE, CLI), (
        Option("top_k", 5, "candidates kept (published on ~/candidates)", at_least=1),
        Option("score_threshold", -1.0, "cosine similarity; matches below it are dropped (-1: keep all)"),
        Option("exclude_seconds", 0.0, "s: ignore keyframes of the same session this close in time "
               "(loop closure: e.g. 30)", at_least=0),
        Option("retrieve", "faiss", "faiss, or faiss_scan_context (adds the live scan's Scan Context candidates; "
               "needs the scan)", choices=_stage_choices("retrieve")),
        Option("scan_context_candidates", 5, "retrieve faiss_scan_context: keyframes added by the live scan's "
               "Scan Context", at_least=1),
        Option("rerank", "none", "none, exact, query_expansion or cross_attention (map built with --tokens)",
               choices=_rerank_choices),
        Option("rerank_candidates", 20, "index results the reranker sees (>= top_k)", at_least=1),
        Option("covariance_temperature", 0.02, "softmax temperature of the candidates' scores in the covariance",
               above=0),
        Option("position_floor_m", 1.0, "m: smallest position standard deviation of a published match", at_least=0),
        Option("rotation_floor_deg", 5.0, "deg: smallest rotation standard deviation of a published match",
               at_least=0),
        Option("min_scan_coverage", 0.001, "a scan covering less of the image than this fraction is left out "
               "(answered from the image alone)", at_least=0, at_most=1),
    )),
    Section("verification", "verification of the retrieved candidates (docs/verification.md)", (NODE, CLI), (
        Option("verify", AUTO_VERIFY, "auto (node's default): registration with use_scan, else sequence; registration: "
               "only matches whose keyframe cloud registers to the live scan (scan + map built with --cloud-voxel), "
               "refined pose; sequence: a match only once the last N matches agree with the motion; none: every "
               "top-1, unverified (the flags' default: offline figures of raw retrieval)", choices=_verify_choices,
               cli_default="none"),
        Option("verify_candidates", 5, "with verify: how many of the best candidates are tried, in rank order",
               at_least=1),
        Option("registration_min_fitness", 0.4, "registration: accept when this fraction of the scan's structure "
               "points (not horizontal) are inliers ...", at_least=0, at_most=1),
        Option("registration_max_rmse_m", 0.45, "m: ... and their rmse is at most this ...", above=0),
        Option("registration_min_inliers", 200, "... and at least this many structure points are inliers",
               at_least=0),
        Option("registration_inlier_m", 0.5, "m: a scan point this close to the keyframe cloud is an inlier", above=0),
        Option("registration_correspondence_m", 2.0, "m: fine alignment's correspondence gate", above=0),
        Option("registration_coarse_correspondence_m", 4.0, "m: coarse alignment's correspondence gate", above=0),
        Option("registration_coarse_voxel_m", 2.0, "m: voxel of the coarse alignment's clouds", above=0),
        Option("registration_yaw_hypotheses", 1, "initial yaws tried about the sensor's z axis (1: identity only)",
               at_least=1),
        Option("registration_threads", 1, "threads of one registration", at_least=1),
    )),
    # The node's defaults: the path check chosen on validation (docs/results.md, "Sequence verification with
    # odometry"); the flags keep the stamps-only check (cli_default), the offline figures' baseline.
    Section("sequence", "sequence verification (SequenceConfig): verify sequence, or auto without the scan",
            (NODE, CLI), (
        Option("sequence_length", 4, "N consecutive agreeing matches", at_least=1, field="length", cli_default=3),
        Option("sequence_tolerance", 5.0, "stamps only: slack per step (m); with odometry: how far a supporting candidate may lie from where the path puts its query (m)",
               at_least=0, field="tolerance_m"),
        Option("sequence_max_speed", 30.0, "without odometry: consecutive matches at most this fast apart (m/s)",
               at_least=0, field="max_speed"),
        Option("sequence_max_gap", 5.0, "a longer pause restarts (s)", at_least=0, field="max_gap_s"),
        Option("sequence_min_travel", 0.0, "with odometry: the N queries must span this much travel (m)",
               at_least=0, field="min_travel_m"),
        Option("sequence_odometry", True, "check the odometry's paths over the top sequence_candidates (PathVerifier; "
               "relative motion only): the node's from tf odom_frame -> base_frame (a query without it is not "
               "confirmed), offline the queries' ground-truth poses; false: stamps only, top-1 (the flags' default)",
               field=None, cli_default=False),
        Option("sequence_candidates", 20, "with odometry: each query's top-K keyframes are hypotheses and path supports",
               at_least=1, field="candidates", cli_default=1),
        Option("sequence_tolerance_deg", 20.0, "with odometry: predicted vs keyframe heading (deg; 180: position only)",
               at_least=0, field="tolerance_deg", cli_default=180.0),
        Option("sequence_min_score", 0.9878, "with odometry: accept a path whose mean descriptor score reaches this "
               "(the node's default: cmirl_driving's validation threshold; -1: any)", field="min_score", cli_default=-1.0),
        Option("sequence_min_turn", 0.0, "with odometry: the window's heading must change this much (deg; 0: off)",
               at_least=0, field="min_turn_deg"),
        Option("sequence_zscore", False, "with odometry: score each query's candidates as z-scores over its top-K",
               field="zscore"),
        Option("sequence_unique", 30.0, "with odometry: reject when another consistent path starts this far away "
               "(m; 0: off) ...", at_least=0, field="unique_m", cli_default=0.0),
        Option("sequence_unique_margin", float("inf"), "... and scores within this margin of the best (inf: whatever "
               "it scores)", at_least=0, field="unique_margin"),
    )),
    Section("frames", "frames (REP 105) of every published pose", (NODE,), (
        Option("map_frame", "map", "frame_id of the published poses (the prior map)"),
        Option("base_frame", "base_link", "the robot's base frame: published poses are its; diagnostics check that "
               "the sensor frames hang off it"),
        Option("odom_frame", "odom", "odometry frame read from /tf (session-keyframe spacing and poses; map -> odom tf)"),
    )),
    Section("session", "live session map: loop closures within the node's own input", (NODE,), (
        Option("session_map", False, "grow a session map from the node's queries and search loop closures in it "
               "(use_scan, verify: registration)"),
        Option("keyframe_distance", 2.0, "m: a new session keyframe when the base moved this far (tf odom_frame -> "
               "base_frame)", above=0),
        Option("loop_closure_min_gap", 30.0, "s: session keyframes newer than this relative to the query are no "
               "loop-closure candidates", at_least=0),
        Option("session_map_out", "", "directory that ~/save_map writes (empty: the service fails, saying so)"),
    )),
    Section("relocalization", "relocalization against the prior map", (NODE,), (
        Option("relocalize_on_start", False, "arm one relocalization at activation"),
        Option("relocalize_matches", 1, "agreeing verified matches (within 1 m and 10 deg of one map -> odom "
               "correction) before the one initialpose", at_least=1),
        Option("publish_map_odom_tf", False, "after a verified relocalization, broadcast map_frame -> odom_frame on /tf"),
    )),
    Section("outputs", "outputs", (NODE,), (
        Option("publish_candidates", True, "ranked candidates on ~/candidates"),
        Option("publish_loop_closure", True, "loop closures on ~/loop_closure"),
        Option("publish_markers", True, "~/markers (matches) and ~/map_markers (keyframes, latched)"),
        Option("publish_debug_image", False, "~/debug_image: the query with its match written on it"),
        Option("marker_lift", [0.0, 0.0, 5.0], "offset of the query marker from its estimate (map frame, z up)",
               length=3),
    )),
    Section("diagnostics", "diagnostics and logs", (NODE,), (
        Option("diagnostics_period", 1.0, "s between /diagnostics messages; 0 = off", at_least=0),
        Option("stats_window", 10.0, "s of answers that the rate and latency figures cover", above=0),
        Option("warn_throttle_s", 5.0, "s between repeated warnings about rejected messages", at_least=0),
    )),
)
OPTIONS = {o.name: o for section in SECTIONS for o in section.options}
# ROS's own parameter, listed in the yaml for launch files that replay bags.
USE_SIM_TIME = Option("use_sim_time", False, "ROS: take the time from /clock (bag replay)")


def section(name: str) -> Section:
    (found,) = [s for s in SECTIONS if s.name == name]
    return found


def node_options() -> list[Option]:
    return [o for s in SECTIONS for o in s.options_in(NODE)]


def cli_options(sections: Iterable[str], names: Iterable[str] = ()) -> list[Option]:
    """The flags of `sections`, then of the single options `names` (from other sections)."""
    chosen = [o for name in sections for o in section(name).options_in(CLI)]
    return chosen + [OPTIONS[name] for name in names if OPTIONS[name] not in chosen]


# ------------------------------------------------------------------------------------ node parameters
def check_parameters(values: Mapping[str, Any]) -> None:
    """Raise one ValueError naming the first node parameter that fails its option's checks."""
    for option in node_options():
        problem = option.problem(values[option.name])
        if problem:
            raise ValueError(f"parameter '{option.name}' {problem}")


# -------------------------------------------------------------------------------------- config/localize.yaml
YAML_HEADER = """\
# Parameters of the cmirl_ros `localizer` node. GENERATED from cmirl_ros/options.py by
# `cmirl config localize-yaml --out config/localize.yaml` (make config): edit the options there.
# Used by launch/localize.launch.py (params_file:=...); any of them can be overridden with
# `--ros-args -p name:=value`. `/**` applies them whatever namespace the node runs in.
/**:
  ros__parameters:
"""


def localize_yaml() -> str:
    """The node's options, a comment line per section, each option's help beside it (aligned per section)."""
    lines = []
    for s in [*SECTIONS, Section("ros", "ROS", (NODE,), (USE_SIM_TIME,))]:
        entries = [(f"{o.name}: {_yaml_value(o.default)}", o.help) for o in s.options_in(NODE)]
        if entries:
            width = max(len(entry) for entry, _ in entries) + 2
            lines += [f"# {s.title}", *(f"{entry:<{width}}# {help}" for entry, help in entries)]
    return YAML_HEADER + "".join(f"    {line}\n" for line in lines)


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]  # flow style: '', [0.0, -5.0, 0.0]


# -------------------------------------------------------------------------------------------- CLI flags
def add_cli_arguments(parser: argparse.ArgumentParser, sections: Iterable[str], names: Iterable[str] = ()) -> None:
    """Flags of the options in `sections` (+ `names`), in one --help group per section."""
    groups = {}
    for option in cli_options(sections, names):
        title = next(s.title for s in SECTIONS if option in s.options)
        group = groups.setdefault(title, parser.add_argument_group(title))
        group.add_argument(option.flag, **_argparse_keywords(option))


def _argparse_keywords(option: Option) -> dict:
    if isinstance(option.default, bool):  # a switch: only off by default fits a flag without a value
        assert option.default_in(CLI) is False, option.name
        return {"action": "store_true", "help": option.help}
    keywords = {"type": _checked(option), "default": option.default_in(CLI), "help": option.help}
    if isinstance(option.choices, tuple):
        keywords["choices"] = option.choices
    return keywords


def _checked(option: Option) -> Callable[[str], Any]:
    """The flag's type: converts, then applies the option's checks (argparse names the flag)."""
    convert = type(option.default)

    def parse(text: str):
        value = convert(text)
        problem = option.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = convert.__name__  # argparse's 'invalid int value' message
    return parse


# ----------------------------------------------------------------------------------- config dataclasses
def _fields(section_names: Iterable[str], values: Mapping[str, Any]) -> dict:
    """Dataclass fields of the sections' options, from `values` (node parameters or vars(args));
    an option that `values` lacks (a command without that flag) takes its flag's default."""
    return {(o.field or o.name): values.get(o.name, o.default_in(CLI))
            for name in section_names for o in section(name).options if o.field is not None}


def localizer_config(values: Mapping[str, Any], **overrides):
    """LocalizerConfig of the localizer and verification options (`verify` resolved: not auto);
    `verify: sequence` runs after the localizer (on its top matches), so the localizer itself does
    not verify then."""
    from cmirl_ros.localization.localizer import LocalizerConfig

    fields = _fields(("localizer", "verification"), values)
    if fields["verify"] == SEQUENCE_VERIFY:
        fields["verify"] = "none"
    return LocalizerConfig(**{**fields, **overrides})


def sequence_config(values: Mapping[str, Any]):
    from cmirl_ros.localization.sequence import SequenceConfig

    return SequenceConfig(**_fields(("sequence",), values))


# ------------------------------------------------------------------------------------ `cmirl config`
HELP = "generated configuration files (config/localize.yaml from the option tree)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="config_command", required=True)
    yaml_command = commands.add_parser("localize-yaml", help="the node's parameters file, generated",
                                       description="print (or write) config/localize.yaml as the option tree makes it")
    yaml_command.add_argument("--out", default=None, help="write it here (atomically) instead of printing it")


def run(args: argparse.Namespace) -> int:
    from cmirl_ros.atomic import atomic_write_text

    text = localize_yaml()
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    return 0
