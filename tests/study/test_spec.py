"""STUDY.yaml checks: every problem is one PgmError naming the file and key, before anything loads."""

import math

import pytest
import yaml

from paligemma_cli.errors import PgmError
from paligemma_cli.study.spec import GridPoint, check_study, read_study


@pytest.fixture
def study_dir(tmp_path, merge_inputs, synthetic_data):
    def write(**over):
        spec = {"base_model": str(merge_inputs["base"]),
                "experts": {"vqav2": {"path": str(merge_inputs["adapter_a"]), "data_root": str(synthetic_data("vqav2"))},
                            "mine": {"path": str(merge_inputs["adapter_b"]), "data_root": str(synthetic_data("gqa")),
                                     "task": "gqa"}},
                "grid": [{"method": "ties", "density": [0.3, 0.5], "lambda": 1.0}, {"method": "tsv"}]}
        for key, value in over.items():
            if value is None:
                spec.pop(key)
            else:
                spec[key] = value
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path
    return write


def test_a_good_file_becomes_the_grid_in_order(study_dir, merge_inputs):
    study = read_study(study_dir(max_eval_samples=8), {"max_eval_samples": 4, "batch_size": None})
    assert [e.task for e in study.experts] == ["vqav2", "gqa"] and study.experts[1].name == "mine"
    assert study.grid == (GridPoint("ties", (("density", 0.3), ("lambda", 1.0))),
                          GridPoint("ties", (("density", 0.5), ("lambda", 1.0))), GridPoint("tsv"))
    assert study.max_eval_samples == 4 and study.batch_size == 16  # the flag wins; None leaves the key
    assert study.param_names == ["density", "lambda"] and study.grid[0].label == "ties density=0.3 lambda=1.0"
    check_study(study, str(merge_inputs["base"]))  # nothing to complain about


@pytest.mark.parametrize("over,expected", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"grid": None}, "'grid' is missing"),
    ({"grid": [{"method": "tiez"}]}, "unknown method 'tiez'"),
    ({"grid": [{"method": "ties", "densty": 0.3}]}, "unknown parameter 'densty'"),
    ({"grid": [{"method": "ties", "density": [0.3, math.nan]}]}, "must be finite numbers"),
    ({"grid": [{"method": "ties", "density": math.inf}]}, "must be finite numbers"),
    ({"grid": [{"method": "ties", "density": []}]}, "empty list"),
    ({"experts": {"vqa": {"path": "x", "data_root": "y"}}}, "Unknown task 'vqa'"),
    ({"experts": {"vqav2": {"path": "x"}}}, "experts.vqav2 has no data_root"),
    ({"experts": {"vqav2": {"path": "x", "data_root": "y", "weight": 1}}}, "unknown key 'weight'"),
    ({"max_eval_samples": 0}, "max_eval_samples must be a whole number >= 1"),
    ({"quantization": "3bit"}, "quantization must be one of"),
])
def test_bad_files_are_one_line(study_dir, over, expected):
    with pytest.raises(PgmError) as err:
        read_study(study_dir(**over))
    assert expected in err.value.message and "study.yaml" in err.value.message
    assert "\n" not in err.value.message


def test_missing_data_root_and_expert_path_are_named(study_dir, tmp_path, merge_inputs):
    with pytest.raises(PgmError, match=r"experts.vqav2.data_root .*nowhere does not exist"):
        read_study(study_dir(experts={"vqav2": {"path": str(merge_inputs["adapter_a"]),
                                                "data_root": str(tmp_path / "nowhere")}}))
    with pytest.raises(PgmError, match=r"experts.vqav2.path .*gone does not exist"):
        read_study(study_dir(experts={"vqav2": {"path": str(tmp_path / "gone"), "data_root": str(tmp_path)}}))


@pytest.mark.parametrize("grid,expected", [
    ([{"method": "ties", "density": 1.5}], "density"),
    ([{"method": "tsv", "density": 0.3}], "density has no effect"),
    ([{"method": "slerp"}], "exactly two models"),  # slerp with 2 experts is fine: see below
])
def test_grid_points_are_checked_as_pgm_merge_checks_its_flags(study_dir, merge_inputs, grid, expected):
    study = read_study(study_dir(grid=grid))
    if grid[0]["method"] == "slerp":  # two experts: allowed
        check_study(study, str(merge_inputs["base"]))
        return
    with pytest.raises(PgmError) as err:
        check_study(study, str(merge_inputs["base"]))
    assert expected in err.value.message and "--" not in err.value.message


def test_an_expert_from_another_base_is_refused(study_dir, tiny_pg2_dir):
    study = read_study(study_dir(base_model=str(tiny_pg2_dir)))
    with pytest.raises(PgmError) as err:
        check_study(study, str(tiny_pg2_dir))
    assert "study.yaml" in err.value.message
