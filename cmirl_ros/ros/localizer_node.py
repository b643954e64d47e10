"""The `localizer` node: camera image (+ optional scan) in, matched map poses and loop closures out.

Plain node by default (configures and activates itself at start); with `managed:=true` it is a
lifecycle node driven from outside like a Nav2 server: configure loads the model and the map,
activate subscribes and starts answering, deactivate unsubscribes, cleanup frees the model.

Threads: the executor thread only decodes and validates messages and drops the newest query into
a one-item slot; one inference thread takes it from there, so a slow model never builds a queue
(replaced queries are counted as dropped) and services and diagnostics stay responsive.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from cmirl_ros.formats import one_line
from cmirl_ros.geometry.camera import Calibration, PinholeCamera, invert_transform, make_transform
from cmirl_ros.geometry.frames import base_covariance, calibration_from_tf, kitti_T_base_cam
from cmirl_ros.geometry.kitti_calib import KITTI_IMAGE_SIZE
from cmirl_ros.geometry.tf_tree import TfError, TfTree
from cmirl_ros.options import (SEQUENCE_VERIFY, check_parameters, localizer_config, node_options, resolve_verify,
                               sequence_config)
from cmirl_ros.ros import messages
from cmirl_ros.ros.conversions import numpy_to_image
from cmirl_ros.ros.relocalize import Relocalizer
from cmirl_ros.ros.relocalize import check_parameters as check_relocalization
from cmirl_ros.ros.stats import RecentEvents, RollingStats, Silence
from cmirl_ros.ros.sync import ImageScanSynchronizer, LatestSlot, Stamped
from cmirl_ros.ros.tf_input import add_tf_message
from cmirl_ros.sensor_decoding import (
    MalformedMessage,
    Rectification,
    camera_rectification,
    compressed_image_to_rgb,
    image_to_rgb,
    pointcloud2_to_xyzi,
    stamp_to_seconds,
)
from cmirl_ros.topics import COMPRESSED_SUFFIX

NODE_NAME = "localizer"
READY_LOG = "localizer ready"
WAITING_LOG = "localizer waiting for configure"
UNVERIFIED_LOG = "verify is 'none': ~/match publishes every top-1 match UNVERIFIED"

# Every parameter with its default, from the option tree (cmirl_ros/options.py), which also
# generates config/localize.yaml and the shared flags of `cmirl localize` / `cmirl eval`.
PARAMETERS = {option.name: option.default for option in node_options()}
# tf2's listener QoS: /tf_static latched, both deep enough for a burst of transforms.
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
WORKER_GRACE_S = 0.5  # at shutdown: how long a query in progress may still run
SHUTDOWN_LIMIT_S = 1.5  # a shutdown taking longer dumps the thread stacks and exits (code 1)
# What decoding a hostile message may raise (MalformedMessage is a ValueError); counted, never fatal.
BAD_MESSAGE = (ValueError, TypeError, OverflowError)
# Why a scan cannot be projected into its image: frames not in tf, no CameraInfo, unreadable calib_file.
NO_CALIBRATION = (TfError, OSError, *BAD_MESSAGE)


class LoadError(Exception):
    """Loading a model or map failed; the message names the file and the problem."""


def naming_the_file(kind: str, source, load):
    """`load()`, with any exception turned into a LoadError naming `source`: a damaged file can make
    a loader raise anything (KeyError, AttributeError, tokenize errors), and the node must neither
    die of it nor report a bare `'keyframes'`."""
    try:
        return load()
    except Exception as e:
        text = one_line(e)
        if isinstance(e, (FileNotFoundError, ValueError)) and str(source) in text:
            raise LoadError(text) from e  # the loaders' own errors already name the file
        raise LoadError(f"{kind} {source}: {type(e).__name__}: {text}") from e


@dataclass
class Query:
    header: Header
    stamp: float
    rgb: np.ndarray  # rectified when a CameraInfo says how
    camera_info: CameraInfo | None  # the last usable one when the image arrived
    rectification: Rectification | None  # its rectification: intrinsics of `rgb`; None = calib_file's
    received: float  # time.monotonic() when the image arrived
    points: np.ndarray | None = None
    calib: Calibration | None = None  # the scan's projection into `rgb`
    scan_frame: str = ""  # the scan's header frame and stamp
    scan_stamp: float = 0.0
    T_base_cam: np.ndarray | None = None  # the camera on base_frame when the image arrived (`_camera_on_base`)


class LocalizerNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for option in node_options():
            self.declare_parameter(option.name, option.default, ParameterDescriptor(
                description=option.help, additional_constraints=option.constraints()))
        self.params: dict = {}
        self._localizer = None
        self._model = None
        self._session = None  # SessionLoopClosures with session_map
        self._sequence = None  # QueryStreamVerifier with verify: sequence
        self._outputs: dict = {}
        self._inputs: list = []
        self._slot = LatestSlot()
        self._synchronizer: ImageScanSynchronizer | None = None
        self._worker: threading.Thread | None = None
        self._camera_info: CameraInfo | None = None
        self._rectification: Rectification | None = None
        self._calibrations: dict = {}  # image size -> Calibration from calib_file
        self._tf = TfTree()
        self._frames = {"camera": "", "scan": ""}  # last seen header frame ids
        self._scan_silence = Silence()
        self._enabled = True
        self._active = False
        self._stats = RollingStats()
        self._recent_errors = RecentEvents()
        self._recent_scan_misses = RecentEvents()
        self._recent_calibration_misses = RecentEvents()
        self.counts = {"images": 0, "scans": 0, "answered": 0, "below_threshold": 0, "rejected": 0, "errors": 0,
                       "fused": 0, "scan_missed_image": 0, "no_calibration": 0, "image_only_fallback": 0,
                       "verified": 0, "unverified": 0, "camera_pose": 0, "sequence_no_odometry": 0}
        self._last_calibration_error = ""
        self._last_scan_coverage = float("nan")
        self._last_score = float("nan")
        self._last_rejection = ""
        self._last_warning: dict[str, float] = {}
        self.create_service(SetBool, "~/set_enabled", self._on_set_enabled)
        self.create_service(Trigger, "~/reload_map", self._on_reload_map)
        self._relocalizer = Relocalizer(self)
        self.create_service(Trigger, "~/save_map", self._on_save_map)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = None

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.params = self._read_parameters()
            self._load()
        except Exception as e:  # whatever a damaged file makes a loader raise: one line, never a crash
            self._localizer = self._model = None
            self.get_logger().error(f"configure failed: {one_line(e)}")
            return TransitionCallbackReturn.FAILURE
        if self.params["verify"] == "none":
            self.get_logger().warning(f"{UNVERIFIED_LOG}: a look-alike place is published as a match (set verify: "
                                      "auto, registration or sequence unless a consumer verifies them itself)")
        self._create_publishers()
        self._relocalizer.configure(self.params)
        self._slot = LatestSlot()
        self._stats = RollingStats(window=float(self.params["stats_window"]))
        self._recent_errors = RecentEvents(window=float(self.params["stats_window"]))
        self._recent_scan_misses = RecentEvents(window=float(self.params["stats_window"]))
        self._recent_calibration_misses = RecentEvents(window=float(self.params["stats_window"]))
        self._tf = TfTree()
        self._worker = threading.Thread(target=self._inference_loop, name="cmirl-inference", daemon=True)
        self._worker.start()
        period = float(self.params["diagnostics_period"])
        self._diagnostics_timer = self.create_timer(period, self._publish_diagnostics) if period > 0 else None
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._subscribe()
        self._scan_silence = Silence()  # the scan timeout counts from activation
        self._active = True
        self._publish_keyframe_markers()
        self._relocalizer.activate()
        p = self.params
        self.get_logger().info(
            f"{READY_LOG}: model {self._model.name}, map {p['map']} ({len(self._localizer.mapdb)} keyframes), "
            f"verify {p['verify']}, image {self._image_topic()}"
            + (f", scan {self.resolve_topic_name(p['points_topic'])}" if p["use_scan"] else "")
            + (f", calibration {'from ' + p['calib_file'] if p['calib_file'] else 'from tf + CameraInfo'}" if p["use_scan"] else "")
        )
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._unsubscribe()
        self._slot.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._unsubscribe()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self.stop_worker()
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._outputs = {}
        self._relocalizer.release()
        if self._session is not None:
            self._session.destroy()
            self._session = None
        self._localizer = self._model = None

    @property
    def configured(self) -> bool:
        return self._localizer is not None

    def stop_worker(self, timeout: float = 30.0) -> None:
        """Close the slot and wait up to `timeout` s for the query in progress to finish."""
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=timeout)
            self._worker = None

    # ------------------------------------------------------------------ setup
    def _read_parameters(self) -> dict:
        """The parameters, checked; `verify` resolved (auto: registration with use_scan, else sequence)."""
        params = {name: self.get_parameter(name).value for name in PARAMETERS}
        check_parameters(params)  # choices, bounds, lengths
        params["verify"] = resolve_verify(params["verify"], params["use_scan"])
        if not params["map"]:
            raise ValueError("parameter 'map' is empty: give a map directory (cmirl map build ... --out DIR)")
        if not (Path(params["map"]) / "manifest.json").is_file():  # fail before the slow model load
            raise FileNotFoundError(f"{params['map']}: not a map directory (no manifest.json); build one with cmirl map build")
        if params["use_scan"] and not params["calib_file"] and not params["use_camera_info"]:
            raise ValueError("use_scan without 'calib_file' takes the calibration from tf and CameraInfo: "
                             "use_camera_info must be true (or give a KITTI calib.txt as calib_file)")
        if params["verify"] == "registration" and not params["use_scan"]:
            raise ValueError("verify 'registration' registers the live scan against the map's keyframe clouds: "
                             "it needs use_scan: true")
        check_relocalization(params)
        if params["session_map"] and params["verify"] != "registration":
            raise ValueError("session_map verifies its loop closures by registering the live scans: it needs "
                             "use_scan: true and verify: registration")
        return params

    def _load(self) -> None:
        import torch

        from cmirl_ros.localization import Localizer
        from cmirl_ros.mapdb import MapDatabase
        from cmirl_ros.models import load_model, model_fingerprint

        p = self.params
        if p["num_threads"] > 0:
            torch.set_num_threads(int(p["num_threads"]))
        self._model = naming_the_file("model", p["model"], lambda: load_model(p["model"], device=p["device"]))
        config = localizer_config(p, top_k=self._retrieved(p))
        self._localizer = naming_the_file("map", p["map"], lambda: Localizer(
            self._model, MapDatabase.load(p["map"], expect_fingerprint=model_fingerprint(self._model)), config))
        self._calibrations = {}
        if self._tf_needed(p):
            from cmirl_ros.ros.interfaces import tf_message_type

            tf_message_type()  # the generated tf2_msgs: fail at configure, with the reason, when not built
        if p["publish_candidates"]:
            from cmirl_ros.ros.interfaces import candidates_type

            candidates_type()  # the generated cmirl_ros_interfaces, likewise
        if p["session_map"]:
            from cmirl_ros.ros.session import SessionLoopClosures

            self._session = SessionLoopClosures(self, self._localizer, p)
        self._sequence = None
        if p["verify"] == SEQUENCE_VERIFY:
            from cmirl_ros.localization.sequence import QueryStreamVerifier

            self._sequence = QueryStreamVerifier(sequence_config(p), odometry=bool(p["sequence_odometry"]))
        if p["verify"] == "registration":
            return  # the throw-away query below has no scan to verify
        # One throw-away query at a typical camera size: the first real one would otherwise pay for lazy allocations.
        width, height = KITTI_IMAGE_SIZE
        naming_the_file("map", p["map"], lambda: self._localizer.localize(np.zeros((height, width, 3), np.uint8), stamp=0.0))

    def _create_publishers(self) -> None:
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        p = self.params
        self._outputs = {"match": self.create_publisher(PoseWithCovarianceStamped, "~/match", reliable)}
        if p["publish_candidates"]:
            from cmirl_ros.ros.interfaces import candidates_type

            self._outputs["candidates"] = self.create_publisher(candidates_type(), "~/candidates", reliable)
        if p["publish_markers"]:
            self._outputs["markers"] = self.create_publisher(MarkerArray, "~/markers", reliable)
            self._outputs["map_markers"] = self.create_publisher(MarkerArray, "~/map_markers", latched)
        if p["publish_debug_image"]:
            self._outputs["debug_image"] = self.create_publisher(Image, "~/debug_image", qos_profile_sensor_data)

    @staticmethod
    def _retrieved(params: dict) -> int:
        """How many candidates the localizer ranks: top_k, or the path check's sequence_candidates
        hypotheses when more (the outputs still carry top_k)."""
        if params["verify"] == SEQUENCE_VERIFY and params["sequence_odometry"]:
            return max(params["top_k"], params["sequence_candidates"])
        return params["top_k"]

    @staticmethod
    def _tf_needed(params: dict) -> bool:
        """tf for the calibration (use_scan without calib_file), odometry (the session map's, sequence
        verification's) or map -> odom."""
        sequence_odometry = params["verify"] == SEQUENCE_VERIFY and bool(params["sequence_odometry"])
        return ((bool(params["use_scan"]) and not params["calib_file"]) or bool(params["session_map"])
                or bool(params["publish_map_odom_tf"]) or sequence_odometry)

    def _tf_message_type(self):
        """tf2_msgs' TFMessage: required for a scan calibrated from tf, else only wanted (base_frame ->
        camera for the published pose, `_camera_on_base`); None when not built and not required."""
        from cmirl_ros.ros.interfaces import InterfacesNotBuilt, tf_message_type

        try:
            return tf_message_type()
        except InterfacesNotBuilt as e:
            if self._tf_needed(self.params):
                raise
            self.get_logger().warning(f"no /tf input ({one_line(e)}): the camera's place on "
                                      f"'{self.params['base_frame']}' comes from calib_file, if any")
            return None

    def _image_topic(self) -> str:
        topic = self.resolve_topic_name(self.params["image_topic"])
        return topic + COMPRESSED_SUFFIX if self.params["image_transport"] == "compressed" else topic

    def _input_qos(self) -> QoSProfile:
        """A fresh profile per subscription: ROS's `qos_overrides.<topic>.subscription.*` parameters edit it."""
        if self.params["qos"] == "sensor_data":
            return QoSProfile(depth=qos_profile_sensor_data.depth, reliability=qos_profile_sensor_data.reliability,
                              history=qos_profile_sensor_data.history)
        return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)

    def _subscribe_input(self, msg_type, topic: str, callback) -> None:
        self._inputs.append(self.create_subscription(
            msg_type, topic, callback, self._input_qos(),
            qos_overriding_options=QoSOverridingOptions.with_default_policies()))

    def _subscribe(self) -> None:
        p = self.params
        self._synchronizer = None
        if p["use_scan"]:
            self._synchronizer = ImageScanSynchronizer(float(p["sync_slop"]), self._on_synchronized,
                                                       queue_size=int(p["sync_queue_size"]))
            self._subscribe_input(PointCloud2, p["points_topic"], self._on_points)
        tf = self._tf_message_type()
        if tf is not None:
            self._inputs.append(self.create_subscription(tf, "/tf_static", lambda m: self._on_tf(m, True), TF_STATIC_QOS))
            self._inputs.append(self.create_subscription(tf, "/tf", lambda m: self._on_tf(m, False), TF_QOS))
        if p["use_camera_info"]:
            self._subscribe_input(CameraInfo, p["camera_info_topic"], self._on_camera_info)
        if p["image_transport"] == "compressed":
            self._subscribe_input(CompressedImage, self._image_topic(), self._on_compressed_image)
        else:
            self._subscribe_input(Image, p["image_topic"], self._on_image)

    def _unsubscribe(self) -> None:
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []

    # ------------------------------------------------------------------ inputs (executor thread)
    def _reject(self, kind: str, error: Exception) -> None:
        self.counts["rejected"] += 1
        self._last_rejection = f"{kind}: {error}"
        now = time.monotonic()
        if now - self._last_warning.get(kind, -np.inf) >= float(self.params["warn_throttle_s"]):  # per kind
            self._last_warning[kind] = now
            self.get_logger().warning(f"rejected {kind} message: {error} (rejected so far: {self.counts['rejected']})")

    def _on_image(self, msg: Image) -> None:
        self._take_image(msg, image_to_rgb)

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._take_image(msg, compressed_image_to_rgb)

    def _take_image(self, msg, decode) -> None:
        self.counts["images"] += 1
        rectification = self._rectification
        try:
            rgb = decode(msg)
            if rectification is not None:  # undistorted as image_proc would, at the CameraInfo's size
                rgb = rectification.apply(rgb)
        except BAD_MESSAGE as e:
            self._reject("image", e)
            return
        self._frames["camera"] = msg.header.frame_id
        stamp = stamp_to_seconds(msg.header.stamp)
        query = Query(msg.header, stamp, rgb, self._camera_info, rectification, time.monotonic(),
                      T_base_cam=self._camera_on_base(msg.header.frame_id, rgb))
        if self._synchronizer is None:
            self._slot.put(query)
        elif self.params["fallback_image_only"] and self._scan_silent():
            self.counts["image_only_fallback"] += 1
            self._slot.put(query)
        else:
            self._synchronizer.add_image(stamp, query)

    def _scan_silent(self) -> bool:
        return self._scan_silence.seconds() > float(self.params["scan_timeout"])

    def _on_points(self, msg: PointCloud2) -> None:
        self.counts["scans"] += 1
        self._scan_silence.heard()
        self._frames["scan"] = msg.header.frame_id
        stamp = stamp_to_seconds(msg.header.stamp)
        try:
            points = pointcloud2_to_xyzi(msg)
            if len(points) == 0:
                raise MalformedMessage("point cloud has no finite point (all NaN or infinite)")
        except BAD_MESSAGE as e:
            self._reject("point cloud", e)
            points = None  # still takes part in the matching: its image is dropped now instead of waiting
        self._synchronizer.add_scan(stamp, None if points is None else (points, msg.header.frame_id))

    def _on_synchronized(self, image: Stamped, scan: Stamped) -> None:
        """A complete image + scan set: with the scan's projection into the image, or counted and dropped."""
        query: Query = image.value
        points, scan_frame = scan.value
        try:
            calib = self._calibration(query, scan_frame)
        except NO_CALIBRATION as e:
            self.counts["no_calibration"] += 1
            self._recent_calibration_misses.add()
            self._last_calibration_error = one_line(e)
            self.get_logger().warning(
                f"no calibration for the scan at {scan.stamp:.3f}: {self._last_calibration_error}; query dropped "
                f"(so far: {self.counts['no_calibration']})", throttle_duration_sec=float(self.params["warn_throttle_s"]))
            return
        self._slot.put(replace(query, points=points, calib=calib, scan_frame=scan_frame, scan_stamp=scan.stamp))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:  # validity and distortion model checked here, once per distinct CameraInfo (cached)
            self._rectification = camera_rectification(msg)
        except BAD_MESSAGE as e:
            self._reject("camera_info", e)
            return
        self._camera_info = msg

    def _on_tf(self, msg, static: bool) -> None:
        for problem in add_tf_message(self._tf, msg, static):
            self._reject("tf", MalformedMessage(problem))

    def _calibration(self, query: Query, scan_frame: str) -> Calibration:
        """The scan's projection into the query image. From calib_file (extrinsics, and intrinsics at the
        image's size unless a CameraInfo rectified it), else from tf between the image's and the scan's
        header frames + the CameraInfo (`calibration_from_tf`)."""
        if not self.params["calib_file"]:
            if query.camera_info is None:
                raise MalformedMessage(f"no CameraInfo on {self.resolve_topic_name(self.params['camera_info_topic'])} "
                                       "yet: the calibration from tf needs its intrinsics")
            return calibration_from_tf(self._tf, query.camera_info, scan_frame, camera_frame=query.header.frame_id or None)
        calib = self._file_calibration(query.rgb)
        rectification = query.rectification
        if rectification is None:
            return calib
        return Calibration(PinholeCamera(rectification.K, rectification.width, rectification.height),
                           make_transform(rectification.R, np.zeros(3)) @ calib.T_cam_sensor)

    def _file_calibration(self, rgb: np.ndarray) -> Calibration:
        """calib_file's calibration at the image's size (read once per size)."""
        from cmirl_ros.geometry import read_kitti_calib

        height, width = rgb.shape[:2]
        if (width, height) not in self._calibrations:
            kitti = read_kitti_calib(self.params["calib_file"], image_size=(width, height))
            self._calibrations[(width, height)] = kitti.calibration()
        return self._calibrations[(width, height)]

    def _camera_on_base(self, camera_frame: str, rgb: np.ndarray) -> np.ndarray | None:
        """T_base_cam of the image's camera: tf's base_frame -> the image's header frame when tf links
        them, else KITTI's chain from calib_file (`kitti_T_base_cam`: base_link = the road under the
        Velodyne), else None. Looked up here, on the executor thread that writes the tf tree."""
        base = self.params["base_frame"]
        if camera_frame and self._tf.can_transform(base, camera_frame):
            return self._tf.lookup(base, camera_frame)
        if not self.params["calib_file"]:
            return None
        try:
            return kitti_T_base_cam(self._file_calibration(rgb).T_cam_sensor)
        except NO_CALIBRATION:
            return None  # an unreadable calib_file: the scan's calibration reports it

    # ------------------------------------------------------------------ inference (worker thread)
    def _inference_loop(self) -> None:
        slot = self._slot
        last_start = -np.inf
        while True:
            query = slot.get()
            if query is None:
                return
            if not (self._active and self._enabled):
                continue
            rate = float(self.params["max_query_rate"])
            if rate > 0 and time.monotonic() - last_start < 1.0 / rate:
                time.sleep(max(0.0, last_start + 1.0 / rate - time.monotonic()))
                newer = slot.get(timeout=0)  # prefer whatever arrived while waiting
                if newer is not None:
                    slot.count_dropped()
                    query = newer
            last_start = time.monotonic()
            try:
                self._answer(query)
            except Exception as e:  # a bad query must not kill the node; report and go on
                if not rclpy.ok():
                    return  # shutting down: the context went away under a publish, not an error
                self.counts["errors"] += 1
                self._recent_errors.add()
                self.get_logger().error(f"localization failed for query at {query.stamp:.3f}: {e}",
                                        throttle_duration_sec=float(self.params["warn_throttle_s"]))

    def _answer(self, query: Query) -> None:
        localizer = self._localizer
        if localizer is None:
            return
        verify = self.params["verify"]
        if verify == "registration" and query.points is None:  # an image-only fallback query cannot be verified
            self.counts["unverified"] += 1
            return
        result = localizer.localize(query.rgb, points=query.points, stamp=query.stamp, calib=query.calib)
        self._count_fusion(result)
        if self._session is not None and query.points is not None:  # whether or not the prior map matched
            # The scan's stamp: a SLAM back end's keyframes are its scans.
            self._session.add(self._tf, query.scan_stamp, query.points, query.calib, query.scan_frame)
        header = Header(stamp=query.header.stamp, frame_id=self.params["map_frame"])
        matches, top_k = list(result.matches), self.params["top_k"]
        if verify == SEQUENCE_VERIFY and matches:  # the ranking, confirmed or not: candidates, not a match
            self._publish("candidates", messages.candidates_msg(header, matches[:top_k]))
        chosen = self._verified_choice(query, matches)
        if chosen is None:  # registration: the core dropped every unverified candidate; sequence: not confirmed yet
            retrieved_none = verify == "none" or (verify == SEQUENCE_VERIFY and not matches)
            self.counts["below_threshold" if retrieved_none else "unverified"] += 1
            return
        self.counts["verified"] += verify != "none"
        matches.insert(0, matches.pop(chosen))
        matches = matches[:top_k]  # the path check may have ranked more (`_retrieved`)
        best = matches[0]
        covariance = result.covariance if chosen == 0 and len(result.matches) <= top_k else self._covariance(matches)
        match = messages.match_msg(header, *self._match_pose(query, best, covariance))
        self._publish("match", match)
        self._relocalizer.offer(match, verify == "registration", self._tf)
        if verify != SEQUENCE_VERIFY:
            self._publish("candidates", messages.candidates_msg(header, matches))
        self._publish("markers", lambda: messages.match_markers(header, matches, self.params["marker_lift"]))
        self._publish("debug_image", lambda: self._debug_image(query, best))
        now = self.get_clock().now().nanoseconds * 1e-9
        self._stats.add((time.monotonic() - query.received) * 1e3, (now - query.stamp) * 1e3,
                        result.timings_ms.get("encode", float("nan")))
        self._last_score = float(best.score)
        self.counts["answered"] += 1

    def _verified_choice(self, query: Query, matches: list) -> int | None:
        """Index of the match to publish, or None: the first (registration already dropped the unverified
        ones; none publishes it unverified), or the one sequence verification confirms."""
        if self._sequence is None:
            return 0 if matches else None
        poses = np.array([m.T_world_cam for m in matches]).reshape(-1, 4, 4)
        scores = np.array([m.score for m in matches])
        odometry = self._odometry_camera_pose(query) if self._sequence.odometry else None
        return self._sequence.update(query.stamp, poses, scores, odometry)[0]

    def _odometry_camera_pose(self, query: Query) -> np.ndarray | None:
        """T_odom_cam of the query: tf's odom_frame -> base_frame at its stamp, and the camera on the base;
        None (counted as sequence_no_odometry) when either is unknown."""
        p = self.params
        try:
            if query.T_base_cam is None:
                raise TfError(f"camera frame '{query.header.frame_id}' not on '{p['base_frame']}'")
            return self._tf.lookup(p["odom_frame"], p["base_frame"], query.stamp) @ query.T_base_cam
        except TfError as e:
            self.counts["sequence_no_odometry"] += 1
            self.get_logger().warning(f"no odometry for the query at {query.stamp:.3f}, sequence verification "
                                      f"restarts: {one_line(e)} (so far: {self.counts['sequence_no_odometry']})",
                                      throttle_duration_sec=float(p["warn_throttle_s"]))
            return None

    def _covariance(self, matches: list) -> np.ndarray:
        """The spread of the candidates around `matches[0]`, as the core computes it for its own first."""
        from cmirl_ros.localization.covariance import candidates_covariance

        return candidates_covariance(np.array([m.score for m in matches]), np.array([m.T_world_cam for m in matches]),
                                     self._localizer.config)

    def _base_pose(self, query: Query, T_map_cam: np.ndarray) -> np.ndarray | None:
        """T_map_base: base_frame's pose in the z-up map_frame (REP 105) from the query camera's pose
        there (a keyframe's, or the refined T_world_query); None when the camera's place on the base
        is unknown (no tf chain, no calib_file)."""
        if query.T_base_cam is None:
            return None
        return np.asarray(T_map_cam, np.float64) @ invert_transform(query.T_base_cam)

    def _match_pose(self, query: Query, best, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What ~/match publishes: the base's pose and the covariance moved to it, or (base unknown)
        the camera's, counted as `camera_pose`."""
        T_map_cam = best.T_world_cam if best.T_world_query is None else best.T_world_query
        T_map_base = self._base_pose(query, T_map_cam)
        if T_map_base is not None:
            return T_map_base, base_covariance(covariance, T_map_cam, T_map_base)
        self.counts["camera_pose"] += 1
        self.get_logger().warning(
            f"camera frame '{query.header.frame_id}' not on '{self.params['base_frame']}' (not in tf, no calib_file): "
            f"~/match carries the camera's pose (so far: {self.counts['camera_pose']})",
            throttle_duration_sec=float(self.params["warn_throttle_s"]))
        return T_map_cam, covariance

    def _count_fusion(self, result) -> None:
        """Fused queries are counted as such only when the scan really covered the image."""
        if result.scan_coverage is None:
            return
        self._last_scan_coverage = result.scan_coverage
        if result.modalities == "image+depth":
            self.counts["fused"] += 1
            return
        self.counts["scan_missed_image"] += 1
        self._recent_scan_misses.add()
        self.get_logger().warning(
            f"scan covers {100 * result.scan_coverage:.3f} % of the image (intrinsics or calib_file wrong?): "
            f"answered from the image alone (so far: {self.counts['scan_missed_image']})",
            throttle_duration_sec=float(self.params["warn_throttle_s"]))

    def _publish(self, name: str, msg) -> None:
        publisher = self._outputs.get(name)
        if publisher is not None:
            publisher.publish(msg() if callable(msg) else msg)

    def _debug_image(self, query: Query, best) -> Image:
        import cv2

        canvas = query.rgb.copy()  # the query is a read-only view of the incoming message
        text = f"keyframe {best.keyframe_id}  score {best.score:.3f}"
        cv2.putText(canvas, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 0), 2, cv2.LINE_AA)
        return numpy_to_image(canvas, "rgb8", stamp=query.header.stamp, frame_id=query.header.frame_id)

    # ------------------------------------------------------------------ outputs
    def _publish_keyframe_markers(self) -> None:
        if "map_markers" not in self._outputs:
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params["map_frame"])
        marker = messages.keyframe_markers(header, self._localizer.mapdb.keyframes.positions)
        self._outputs["map_markers"].publish(MarkerArray(markers=[marker]))

    def diagnostics_values(self) -> dict:
        summary = self._stats.summary()
        sync = self._synchronizer
        values = {
            "state": "active" if self._active else ("inactive" if self._localizer is not None else "unconfigured"),
            "enabled": self._enabled,
            "verify": self._verification(),
            **self.counts,
            "dropped": self._slot.dropped,
            "unpaired_images": sync.unpaired if sync else 0,
            "late_messages": sync.late if sync else 0,
            "map_size": len(self._localizer.mapdb) if self._localizer is not None else 0,
            "last_score": self._last_score,
            "last_scan_coverage": self._last_scan_coverage,
            "recent_errors": self._recent_errors.count(),
            "recent_scan_misses": self._recent_scan_misses.count(),
            "recent_calibration_misses": self._recent_calibration_misses.count(),
            **summary,
        }
        if sync is not None:
            values["scan_silent_s"] = self._scan_silence.seconds()
        if self._tf_needed(self.params):
            values["tf"] = self._tf_status()
        values.update(self._relocalizer.diagnostics())
        if self._last_calibration_error:
            values["last_calibration_error"] = self._last_calibration_error
        if self._last_rejection:
            values["last_rejection"] = self._last_rejection
        if self._session is not None:
            values.update(self._session.diagnostics())
        return values

    def _verification(self) -> str:
        verify = self.params.get("verify", "")
        if verify == "none":
            return "none: matches are UNVERIFIED"
        if verify == SEQUENCE_VERIFY:
            return f"sequence ({'odometry' if self.params['sequence_odometry'] else 'stamps'})"
        return verify

    def _tf_status(self) -> str:
        """Whether the last seen camera and scan frames hang off base_frame in tf (REP 105)."""
        base = self.params["base_frame"]
        frames = [f for f in self._frames.values() if f] or ["(no sensor message yet)"]
        missing = [f for f in frames if not self._tf.can_transform(base, f)]
        return f"{base} -> {', '.join(frames)}: " + (f"not in tf: {', '.join(missing)}" if missing else "ok")

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        # Levels reflect the last stats_window seconds, not the node's whole life.
        problems = [f"{values['recent_errors']} failed queries"] if values["recent_errors"] else []
        if values["recent_scan_misses"]:
            problems.append(f"{values['recent_scan_misses']} scans missing the image")
        if values["recent_calibration_misses"]:
            problems.append(f"{values['recent_calibration_misses']} scans without calibration "
                            f"({self._last_calibration_error})")
        dead_scan = self._active and self._synchronizer is not None and self._scan_silent()
        ok = self._active and self._enabled and not problems and not dead_scan
        if ok:
            message = "answering"
        else:
            message = f"{values['state']}, {'enabled' if self._enabled else 'disabled'}"
            if dead_scan:
                topic = self.resolve_topic_name(self.params["points_topic"])
                fallback = "answering from images alone" if self.params["fallback_image_only"] else "no query answered"
                message += f"; no scan on {topic} for {values['scan_silent_s']:.1f} s ({fallback})"
            if problems:
                message += f"; in the last {self._recent_errors.window:g} s: {', '.join(problems)}"
        if self.params["verify"] == "none":
            message += "; matches UNVERIFIED (verify: none)"
        level = DiagnosticStatus.OK if ok else (DiagnosticStatus.ERROR if dead_scan else DiagnosticStatus.WARN)
        self._diagnostics.publish(messages.diagnostics_msg(
            self.get_clock().now().to_msg(), f"{self.get_name()}: localization", values, level, message))

    # ------------------------------------------------------------------ services
    def _on_set_enabled(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._enabled = bool(request.data)
        if not self._enabled:
            self._slot.clear()
        response.success = True
        response.message = "enabled" if self._enabled else "disabled"
        return response

    def _on_reload_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._localizer is None:
            response.success, response.message = False, "not configured: nothing to reload"
            return response
        path = self.get_parameter("map").value
        try:  # swaps maps between queries, under the localizer's lock; any failure leaves the old map
            naming_the_file("map", path, lambda: self._localizer.reload(path))
        except Exception as e:
            response.success, response.message = False, f"reload failed, keeping the current map: {one_line(e)}"
            self.get_logger().error(response.message)
            return response
        self.params["map"] = path
        self._publish_keyframe_markers()
        response.success, response.message = True, f"loaded {path} ({len(self._localizer.mapdb)} keyframes)"
        self.get_logger().info(response.message)
        return response

    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._session is None:
            response.success = False
            response.message = "no session map: the node runs with session_map false or is not configured"
            return response
        try:
            response.message = self._session.save(self.get_parameter("session_map_out").value)
            response.success = True
            self.get_logger().info(response.message)
        except Exception as e:  # a full disk or a bad path must not stop the node
            response.success, response.message = False, f"save_map failed: {one_line(e)}"
            self.get_logger().error(response.message)
        return response


def main(args: list[str] | None = None) -> NoReturn:
    """Entry point of the installed `localizer` executable (and `ros2 run cmirl_ros localizer`).

    Ends the process itself once the node is shut down: the interpreter's own teardown (clearing
    the modules of torch & co.) takes seconds, and `ros2 launch` escalates to SIGTERM 5 s after
    SIGINT; the node has nothing left to save by then."""
    code = run(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(args: list[str] | None = None) -> int:
    """Run the node until SIGINT / SIGTERM (or a failed configure); returns the exit code."""
    faulthandler.enable()  # a crash in native code leaves the Python stacks in the log
    rclpy.init(args=args if args is not None else sys.argv)
    node = LocalizerNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter("managed").value:
            node.get_logger().info(f"{WAITING_LOG} (managed node: drive it through its lifecycle services)")
        else:
            node.trigger_configure()
            if not node.configured:
                code = 1
            else:
                node.trigger_activate()
        if code == 0:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # SIGINT / SIGTERM: fall through to the orderly shutdown below
    except Exception:
        # The signal handler invalidates the context while a timer callback may still be
        # publishing; that error is part of the shutdown, any other one is real.
        if rclpy.ok():
            raise
    finally:
        # A shutdown that hangs dumps every thread's stack into the log and exits: within
        # launch's 5 s SIGINT timeout, with the stacks, rather than killed silently by SIGTERM.
        faulthandler.dump_traceback_later(SHUTDOWN_LIMIT_S, exit=True)
        node._active = False
        # A query in progress is not waited for beyond a moment: it would only publish into a
        # node being destroyed (rclpy refuses that with an exception, which the worker ignores).
        node.stop_worker(timeout=WORKER_GRACE_S)
        node.destroy_node()
        # The context's shutdown callbacks wake the executor: shutting the executor down first
        # let them touch its destroyed guard condition (an intermittent segfault at exit).
        rclpy.try_shutdown()
        executor.shutdown()
        faulthandler.cancel_dump_traceback_later()
    return code


if __name__ == "__main__":
    main()
