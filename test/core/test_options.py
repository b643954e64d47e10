"""The option tree (cmirl_ros/options.py) and its views: config/localize.yaml (the node's
parameters; the running node is checked in test/ros/test_launch.py), the flags of `cmirl localize`
and `cmirl eval`, and the config dataclasses built from either."""
from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from cmirl_ros.cli import build_parser, main
from cmirl_ros.localization.localizer import LocalizerConfig
from cmirl_ros.localization.sequence import SequenceConfig
from cmirl_ros.options import (CLI, NODE, OPTIONS, SECTIONS, check_parameters, cli_options, localize_yaml,
                               localizer_config, node_options, resolve_verify, section, sequence_config)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_YAML = ROOT / "config" / "localize.yaml"
SHARED = ("localizer", "verification", "sequence")  # sections that are flags too
NOT_OPTIONS = {"exclude_session", "pose"}  # LocalizerConfig fields set by code (the query's session; one pose stage)


def yaml_parameters(text: str) -> dict:
    return yaml.safe_load(text)["/**"]["ros__parameters"]


def flag_defaults(command: str) -> dict:
    """dest -> default of every flag of `cmirl COMMAND`."""
    parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}


def test_committed_yaml_is_the_generated_one():
    assert COMMITTED_YAML.read_text() == localize_yaml(), \
        "config/localize.yaml is stale: regenerate it with `cmirl config localize-yaml --out config/localize.yaml`"


def test_config_command_prints_and_writes_the_yaml(tmp_path, capsys):
    assert main(["config", "localize-yaml"]) == 0
    assert capsys.readouterr().out == localize_yaml()
    out = tmp_path / "sub" / "localize.yaml"
    assert main(["config", "localize-yaml", "--out", str(out)]) == 0
    assert out.read_text() == localize_yaml()


def test_yaml_holds_every_node_option_with_its_default():
    params = yaml_parameters(localize_yaml())
    assert params == {**{o.name: o.default for o in node_options()}, "use_sim_time": False}


def test_node_parameters_yaml_and_flags_agree_on_the_shared_sections():
    params = yaml_parameters(COMMITTED_YAML.read_text())
    localize = flag_defaults("localize")
    for name in SHARED:
        for option in section(name).options:
            in_node, in_cli = option in node_options(), option in cli_options([name])
            assert (option.name in params) == in_node, option.name
            assert (option.name in localize) == in_cli, option.name
            if in_node:
                assert params[option.name] == option.default, option.name
            if in_cli:
                assert localize[option.name] == option.default_in(CLI), option.name
            if in_node and in_cli and option.cli_default is None:
                assert params[option.name] == localize[option.name], option.name
    evaluate = flag_defaults("eval")
    for option in cli_options(("verification", "sequence"), ["retrieve"]):
        assert evaluate[option.name] == localize[option.name], option.name
    assert evaluate["exclude_seconds"] == 30.0  # eval's own revisit window, not the localizer option


def test_the_tree_declares_every_config_field_with_its_default():
    localizer = {(o.field or o.name): o.default_in(CLI) for name in ("localizer", "verification")
                 for o in section(name).options if o.field is not None}
    assert set(localizer) == {f.name for f in fields(LocalizerConfig)} - NOT_OPTIONS
    defaults = asdict(LocalizerConfig())
    assert {k: defaults[k] for k in localizer} == localizer
    sequence = {o.field: o.default_in(CLI) for o in section("sequence").options if o.field is not None}
    assert sequence == asdict(SequenceConfig())


def test_every_flag_reaches_the_config(tmp_path):
    """Non-default values for every shared flag of `cmirl localize` end up in the configs it builds."""
    changed = {"retrieve": "faiss_scan_context", "rerank": "exact", "verify": "registration", "sequence_odometry": True,
               "sequence_zscore": True, "sequence_unique_margin": 0.25,
               "min_scan_coverage": 0.5, "registration_min_fitness": 0.7}
    argv = ["localize", "--map", str(tmp_path), "--root", str(tmp_path)]
    for option in cli_options(SHARED):
        value = changed.get(option.name, option.default + 1 if not isinstance(option.default, (str, bool)) else None)
        changed[option.name] = value
        argv += [option.flag] if value is True else [option.flag, str(value)]
    args = build_parser().parse_args(argv)
    assert {o.name: getattr(args, o.name) for o in cli_options(SHARED)} == changed
    config = localizer_config(vars(args)).to_dict()
    for option in [*section("localizer").options, *section("verification").options]:
        assert config[option.field or option.name] == changed[option.name], option.name
    assert sequence_config(vars(args)).to_dict() == {o.field: changed[o.name] for o in section("sequence").options
                                                     if o.field is not None}


def test_verify_sequence_leaves_the_localizer_unverified():
    assert localizer_config({"verify": "sequence"}).verify == "none"
    assert localizer_config({"verify": "registration"}).verify == "registration"


def test_the_node_verifies_by_default_and_the_offline_flags_measure_raw_retrieval():
    """The node's default is auto: registration with the live scan, else sequence; never none unless
    asked. The offline commands' flags keep none (their tables are raw retrieval) and accept auto."""
    assert yaml_parameters(COMMITTED_YAML.read_text())["verify"] == "auto"
    assert resolve_verify("auto", use_scan=True) == "registration"
    assert resolve_verify("auto", use_scan=False) == "sequence"
    assert [resolve_verify(name, use_scan) for name in ("none", "registration", "sequence") for use_scan in (0, 1)] \
        == ["none", "none", "registration", "registration", "sequence", "sequence"]
    assert flag_defaults("localize")["verify"] == flag_defaults("eval")["verify"] == "none"
    args = build_parser().parse_args(["localize", "--map", "m", "--root", "r", "--verify", "auto"])
    assert args.verify == "auto"


@pytest.mark.parametrize("name, value, message", [
    ("qos", "fast", "parameter 'qos' is 'fast', expected one of: sensor_data, reliable"),
    ("top_k", 0, "parameter 'top_k' must be >= 1, got 0"),
    ("scan_timeout", 0.0, "parameter 'scan_timeout' must be > 0, got 0.0"),
    ("min_scan_coverage", 2.0, "parameter 'min_scan_coverage' must be <= 1, got 2.0"),
    ("marker_lift", [1.0], "parameter 'marker_lift' needs 3 values, got [1.0]"),
    ("retrieve", "none", "parameter 'retrieve' is 'none', expected one of: faiss, faiss_scan_context"),
    ("verify", "icp", "parameter 'verify' is 'icp', expected one of: auto, none, registration, sequence"),
])
def test_a_bad_node_parameter_is_one_error_naming_it(name, value, message):
    params = {o.name: o.default for o in node_options()}
    check_parameters(params)
    with pytest.raises(ValueError) as error:
        check_parameters({**params, name: value})
    assert str(error.value) == message


@pytest.mark.parametrize("flag, value, message", [
    ("--top-k", "0", "argument --top-k: must be >= 1, got 0"),
    ("--verify", "icp", "argument --verify: is 'icp', expected one of: auto, none, registration, sequence"),
    ("--sequence-length", "x", "argument --sequence-length: invalid int value: 'x'"),
])
def test_a_bad_flag_is_one_argparse_error_naming_it(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["localize", "--map", str(tmp_path), "--root", str(tmp_path), flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_option_names_are_unique_and_views_known():
    names = [o.name for s in SECTIONS for o in s.options]
    assert len(names) == len(set(names)) == len(OPTIONS)
    assert all(set(o.views or s.views) <= {NODE, CLI} for s in SECTIONS for o in s.options)
