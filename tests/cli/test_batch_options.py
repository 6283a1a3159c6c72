"""The batch options of the command line: one name, one meaning, in every subcommand."""

from __future__ import annotations

import json

import pytest

from sacam.cli import _parser
from sacam.errors import InputError, SacamError
from sacam.evaluation.config import BenchmarkConfig
from sacam.evaluation.runner.store import check_settings


@pytest.mark.parametrize("command", [["explain"], ["benchmark", "."]])
def test_images_per_step_is_the_same_option_in_both_subcommands(command) -> None:
    args = _parser().parse_args([*command, "--images-per-step", "3"])
    assert args.images_per_step == 3


@pytest.mark.parametrize("command", [["explain"], ["benchmark", "."]])
def test_the_old_batch_size_flag_is_refused(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([*command, "--batch-size", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --batch-size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("images_per_step", 0, "images_per_step must be a whole number of at least 1"),
        ("images_per_step", "auto", "images_per_step must be a whole number"),
        ("curve_inputs_per_pass", 0, "or 'auto'"),
        ("curve_inputs_per_pass", 2.5, "curve_inputs_per_pass must be a whole number"),
    ],
)
def test_benchmark_config_checks_its_batch_settings(tmp_path, field, value, message) -> None:
    with pytest.raises(InputError, match=message):
        BenchmarkConfig(tmp_path, **{field: value})
    assert BenchmarkConfig(tmp_path, curve_inputs_per_pass="auto").curve_inputs_per_pass == "auto"


def test_a_run_folder_written_with_the_old_curve_setting_name_resumes(tmp_path) -> None:
    config = BenchmarkConfig(tmp_path, out=tmp_path / "out")
    config.out.mkdir()
    old = config.settings()
    old["curve_batch_size"] = old.pop("curve_inputs_per_pass")
    (config.out / "run.json").write_text(json.dumps(old))
    defaults = BenchmarkConfig(tmp_path).settings()
    check_settings(config.out, config.settings(), defaults)  # the same settings: resumes
    old["curve_batch_size"] = 8
    (config.out / "run.json").write_text(json.dumps(old))
    with pytest.raises(SacamError, match="curve_inputs_per_pass: 8 then, 'auto' now"):
        check_settings(config.out, config.settings(), defaults)
