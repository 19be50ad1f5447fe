"""Settings are declared once: defaults < --config YAML < flags; every problem is named by its flag."""

import pytest

from paligemma_cli.config import TrainRun, all_fields, build_run, flag
from paligemma_cli.errors import PgmError


def test_defaults_are_the_qlora_recipe():
    run = build_run({})
    assert run.model.model_path == "google/paligemma-3b-pt-448"
    assert run.model.quantization == "4bit" and run.model.gradient_checkpointing
    assert (run.lora.lora_rank, run.lora.lora_alpha) == (16, 32.0)
    assert run.lora.target_parts() == ("language",)


def test_yaml_then_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning-rate: 1.0e-4\nbatch_size: 2\nlora_targets: language,projector\n")
    run = build_run({"batch_size": 8}, cfg)
    assert run.train.learning_rate == 1e-4  # from the file
    assert run.train.batch_size == 8  # the flag wins
    assert run.lora.target_parts() == ("language", "projector")


def test_yaml_unknown_key_suggests(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rat: 1\n")
    with pytest.raises(PgmError, match="unknown key 'learning_rat'") as exc:
        build_run({}, cfg)
    assert "learning_rate" in exc.value.hint


def test_yaml_syntax_error_names_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 2\nseed: [1\n")
    with pytest.raises(PgmError, match="line"):
        build_run({}, cfg)


def test_all_problems_are_reported_together():
    with pytest.raises(PgmError) as exc:
        build_run({"max_train_samples": 0, "quantization": "3bit", "lora_targets": "text",
                   "data_root": "a", "hf_dataset": "b"})
    msg = exc.value.message
    for part in ("--max-train-samples must be >= 1", "--quantization must be one of 4bit, 8bit, none",
                 "--lora-targets", "give one data source, not --data-root and --hf-dataset"):
        assert part in msg


def test_wrong_type_names_flag(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: many\n")
    with pytest.raises(PgmError, match="--batch-size has the wrong type"):
        build_run({}, cfg)


def test_to_dict_is_flat_and_complete():
    d = TrainRun().to_dict()
    assert d["learning_rate"] == 2e-4 and d["output_dir"] == "outputs/run" and "lora_rank" in d


FLOAT_FIELDS = [name for name, (_, f) in all_fields().items() if str(f.type).startswith("float")]


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_setting_must_be_finite(name, value):
    """NaN passes every range check (nan < 0 and nan > 1 are both False): each float is checked."""
    with pytest.raises(PgmError) as info:
        build_run({name: value})
    assert f"{flag(name)} must be a finite number (got {value})" in info.value.message


def test_the_float_settings_are_the_ones_expected():
    assert set(FLOAT_FIELDS) == {"lora_alpha", "lora_dropout", "num_epochs", "learning_rate", "weight_decay",
                                 "warmup_ratio", "max_grad_norm"}


def test_an_integer_setting_given_inf_in_yaml_is_the_wrong_type(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_steps: .inf\n")
    with pytest.raises(PgmError, match="--max-steps has the wrong type: inf"):
        build_run({}, cfg)


def test_report_to_takes_a_comma_list_or_a_yaml_list_and_use_wandb_is_its_alias(tmp_path):
    assert build_run({}).train.trackers() == ()
    assert build_run({"report_to": ["wandb", "tensorboard,wandb"]}).train.trackers() == ("wandb", "tensorboard")
    assert build_run({"report_to": ["none"]}).train.trackers() == ()
    assert build_run({"use_wandb": True}).train.trackers() == ("wandb",)
    assert build_run({"use_wandb": True, "report_to": ["wandb,tensorboard"]}).train.trackers() == \
        ("wandb", "tensorboard")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("report-to: [tensorboard, wandb]\n")
    assert build_run({}, cfg).train.trackers() == ("tensorboard", "wandb")
    assert build_run({"report_to": ["none"]}, cfg).train.trackers() == ()  # the flag wins


@pytest.mark.parametrize("values, says", [
    ({"report_to": ["tensorbord"]}, "--report-to takes wandb, tensorboard, none (comma-separated or repeated; "
                                    "got 'tensorbord')"),
    ({"report_to": ["none", "wandb"]}, "--report-to none excludes wandb: give one"),
    ({"use_wandb": True, "report_to": ["tensorboard"]}, "--use-wandb and --report-to tensorboard disagree"),
    ({"use_wandb": False, "report_to": ["wandb"]}, "--no-use-wandb and --report-to wandb disagree"),
    ({"hub_private": True}, "--hub-private only applies with --push-to-hub REPO_ID"),
])
def test_report_to_and_hub_problems_name_the_flag(values, says):
    with pytest.raises(PgmError) as exc:
        build_run(values)
    assert says in exc.value.message


def test_train_command_lists_the_settings_that_differ_from_the_defaults():
    from paligemma_cli.config import train_command

    run = build_run({"task": "gqa", "model_path": "tiny", "data_root": "/data/my gqa", "max_steps": 5,
                     "gradient_checkpointing": False, "report_to": ["tensorboard", "wandb"], "resume": True})
    command = train_command(run.to_dict())
    assert command == ("pgm train gqa --model-path tiny --no-gradient-checkpointing --data-root '/data/my gqa' "
                       "--max-steps 5 --report-to tensorboard,wandb")
