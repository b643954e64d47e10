"""Dataset readers, chosen by name: every command selects data with the same flags."""
from cmirl_ros.datasets import bag, kitti, rgbd  # noqa: F401  (registers the readers)
from cmirl_ros.datasets.base import DATASETS, Dataset, Frame, add_dataset_args, open_dataset, parse_frames

__all__ = ["DATASETS", "Dataset", "Frame", "add_dataset_args", "open_dataset", "parse_frames"]
