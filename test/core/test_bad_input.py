"""Bad files get a clear error that names the file and the problem."""
import shutil

import numpy as np
import pytest

from cmirl_ros.cli import main
from cmirl_ros.datasets.kitti import read_velodyne
from cmirl_ros.geometry import read_kitti_calib, read_kitti_poses

CALIB = """P0: 7.188560000000e+02 0 6.071928000000e+02 0 0 7.188560000000e+02 1.852157000000e+02 0 0 0 1 0
P1: 7.188560000000e+02 0 6.071928000000e+02 -3.861448000000e+02 0 7.188560000000e+02 1.852157000000e+02 0 0 0 1 0
P2: 7.188560000000e+02 0 6.071928000000e+02 4.538225000000e+01 0 7.188560000000e+02 1.852157000000e+02 -1.130887000000e-01 0 0 1 3.779761000000e-03
P3: 7.188560000000e+02 0 6.071928000000e+02 -3.372877000000e+02 0 7.188560000000e+02 1.852157000000e+02 2.369057000000e+00 0 0 1 4.915215000000e-03
"""


def test_velodyne_size_not_multiple_of_16(tmp_path):
    path = tmp_path / "000000.bin"
    path.write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match=r"000000\.bin.*20 bytes.*16-byte"):
        read_velodyne(path)


def test_calib_missing_tr(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(CALIB)
    with pytest.raises(ValueError, match=r"calib\.txt: missing Tr"):
        read_kitti_calib(path)


def test_calib_with_wrong_count(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(CALIB + "Tr: 1 2 3\n")
    with pytest.raises(ValueError, match=r"calib\.txt:5: Tr has 3 numbers"):
        read_kitti_calib(path)


def test_poses_file_with_wrong_columns(tmp_path):
    path = tmp_path / "00.txt"
    path.write_text("1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"00\.txt: expected 12 numbers"):
        read_kitti_poses(path)


def test_missing_sequence_is_one_clean_cli_error(tmp_path, capsys):
    code = main(["map", "build", "--dataset", "kitti", "--root", str(tmp_path), "--seq", "07", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "sequences/07" in err and "Traceback" not in err
