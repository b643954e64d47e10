"""`cmirl demo`'s ROS-free parts: caching of its inputs, scoring and plotting of the node's SLAM outputs
(the demo itself is `make demo`)."""
from __future__ import annotations

import numpy as np

from cmirl_ros.ros import demo


def test_cached_builds_once_and_rebuilds_when_the_source_changes(tmp_path):
    built = []

    def build():
        (tmp_path / "thing").write_text(str(len(built)))
        built.append(1)

    target = tmp_path / "thing"
    for source in ({"a": (1, 2)}, {"a": (1, 2)}, {"a": (1, 3)}):
        assert demo.cached(target, source, build, "a thing") == target
    assert len(built) == 2 and demo.source_of(target) == {"a": [1, 3]}
    (tmp_path / "thing.source.json").unlink()  # e.g. an interrupted build: the record is written last
    demo.cached(target, {"a": (1, 3)}, build, "a thing")
    assert len(built) == 3


def drive():
    """60 frames along map x at 1 m/s, then back over the first 20 m, 100 s later: 20 true revisits."""
    xs = np.r_[np.arange(60.0), np.arange(20.0)]
    stamps = np.r_[np.arange(60.0), 160.0 + np.arange(20.0)]
    poses = np.tile(np.eye(4), (len(xs), 1, 1))
    poses[:, 0, 3] = xs
    return stamps, poses


def test_slam_outputs_are_scored_summarised_and_plotted(tmp_path, capsys):
    stamps, poses = drive()
    reloc = poses[62].copy()
    reloc[1, 3] += 0.2
    outputs = {"loop_closures": [[160.0 + k, float(k)] for k in range(18)] + [[179.0, 45.0]],  # 18 true, 1 false
               "malformed_loop_closures": 0, "edges": [[160.0, 0.0, 0.9, 0.8]], "rejected": [[170.0, 30.0, 0.5, 0.1]],
               "initialposes": [{"stamp": 162.0, "frame_id": "map", "pose": reloc.tolist()}]}
    slam = demo.score_slam(outputs, stamps, poses)
    assert slam["loop_closures_published"] == 19 and slam["loop_closure_revisit_frames"] == 20
    assert slam["loop_closure_precision"] == 18 / 19 and slam["loop_closure_recall"] == 18 / 20
    assert abs(slam["relocalization_error_m"] - 0.2) < 1e-9 and slam["loop_closures_rejected"] == 1
    result = {"images_played": 80, "queries_answered": 80, "answered_fraction": 1.0, "latency_ms_p50": 30.0,
              "latency_ms_p95": 50.0, "dropped": 0, "rejected": 0, "model": "m", "radius_m": 10.0,
              "protocols": {"paper": {"recall@1": 0.5, "recall@1%": 0.7}, "revisit": {"recall@1": 0.4, "queries": 20}}}
    summary = demo.summarize(result, slam)
    for key in ("answered_fraction", "recall@1", "loop_closures_published", "loop_closure_precision",
                "loop_closure_recall", "relocalization_error_m", "latency_ms_p50"):
        assert key in summary
    plot = tmp_path / "trajectory.png"
    demo.plot_demo(plot, stamps, poses, poses[:60:2], outputs, summary)
    assert plot.stat().st_size > 10_000
    demo.print_summary(summary, plot)
    printed = capsys.readouterr().out
    assert "19 published, precision 94.7%, recall 90.0% of 20 true revisits" in printed
    assert "error 0.20 m" in printed
