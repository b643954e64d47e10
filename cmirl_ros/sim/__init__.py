"""Simulated driving sequences: a procedural town around a trajectory, seen by a ray-cast camera and
HDL-64E-like LiDAR, written in the KITTI odometry layout (see docs/sim.md)."""
from cmirl_ros.sim.conditions import CONDITIONS, Condition
from cmirl_ros.sim.sequence import DEMO_SIM, SimConfig, SimFrame, Simulator, simulate_sequence

__all__ = ["CONDITIONS", "Condition", "DEMO_SIM", "SimConfig", "SimFrame", "Simulator", "simulate_sequence"]
