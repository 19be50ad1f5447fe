"""pgm doctor: each check under a controlled environment, and `--error` on real message texts.

Only what cannot exist on this CPU machine is faked (a CUDA GPU, the hub's answers, a full
disk); the checks themselves run for real.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import pytest

from paligemma_cli.diagnose import known_errors as diagnose
from paligemma_cli.diagnose import doctor
from paligemma_cli.diagnose import memory
from paligemma_cli.diagnose.doctor import FAIL, PASS, WARN, DoctorOptions
from paligemma_cli.model.presets import preset_config

SECRET = "hf_FAKEsecretTOKENvalue0123456789abcdef"
WANDB_SECRET = "wandbFAKEsecret0123456789abcdef01234567"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: private HF_HOME, no tokens, no netrc, no W&B mode."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return monkeypatch


def opts(**kw) -> DoctorOptions:
    return DoctorOptions(**{"model_path": "google/paligemma-3b-pt-448", **kw})


def by_name(checks, name):
    return next(c for c in checks if c.name == name)


# --- versions and builds ----------------------------------------------------------------------

def test_python_and_packages_pass_here():
    assert doctor.check_python(opts())[0].status == PASS
    checks = doctor.check_packages(opts())
    assert [c.name for c in checks] == list(doctor.CHECKED_PACKAGES)
    assert all(c.status == PASS for c in checks), checks


def test_package_out_of_range_fails_with_the_pip_command(monkeypatch):
    wanted = {**doctor._requirements(), "transformers": "<5,>=4.44"}
    monkeypatch.setattr(doctor, "_requirements", lambda: wanted)
    check = by_name(doctor.check_packages(opts()), "transformers")
    assert check.status == FAIL and check.commands == ("pip install 'transformers<5,>=4.44'",)


def test_cpu_build_without_driver_warns(env, tmp_path):
    env.setenv("PATH", str(tmp_path))  # no nvidia-smi
    check = doctor.check_torch_build(opts())[0]
    assert check.status == WARN and "CPU-only" in check.detail and "tiny" in check.fix


def test_cpu_build_with_a_driver_fails_with_the_cuda_wheel(env, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    env.setenv("PATH", str(tmp_path))
    check = doctor.check_torch_build(opts())[0]
    assert check.status == FAIL and "download.pytorch.org/whl/cu" in check.commands[0]


def test_cuda_build_without_usable_gpu_fails(env):
    import torch

    env.setattr(torch.version, "cuda", "12.4")
    env.setattr(torch.cuda, "is_available", lambda: False)
    check = doctor.check_torch_build(opts())[0]
    assert check.status == FAIL and check.commands == ("nvidia-smi",) and "CUDA 12.4" in check.fix


def fake_gpu(monkeypatch, name, major, minor, total_gib, free_gib):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name=name, major=major, minor=minor))
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda i: (int(free_gib * memory.GiB), int(total_gib * memory.GiB)))


def test_no_gpu_warns():
    check = doctor.check_gpus(opts())[0]
    assert check.status == WARN and "no CUDA GPU" in check.detail


def test_gpu_details_and_bf16(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", 8, 0, 80, 79)
    check = doctor.check_gpus(opts())[0]
    assert check.status == PASS
    assert "compute 8.0" in check.detail and "bf16 yes" in check.detail and "80.0 GiB total" in check.detail
    fake_gpu(monkeypatch, "Tesla T4", 7, 5, 15, 14.5)
    check = doctor.check_gpus(opts(model_path="google/paligemma-3b-pt-224"))[0]
    assert check.status == WARN and "bf16 no" in check.detail and "fp16" in check.fix


def test_gpu_too_small_for_the_defaults_says_what_fits(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA GeForce RTX 3060", 8, 6, 12, 11.5)
    check = doctor.check_gpus(opts(model_path="google/paligemma-3b-pt-896"))[0]  # ~21 GiB at batch 4
    assert check.status == WARN and "--batch-size" in check.fix
    assert check.commands == ("pgm memory-estimate --model-path google/paligemma-3b-pt-896 --gpu-memory 12GB",)


# --- bitsandbytes ------------------------------------------------------------------------------

def test_bitsandbytes_imports_and_multiplies_here():
    checks = {c.name: c for c in doctor.check_bitsandbytes(opts())}
    assert checks["bitsandbytes import"].status == PASS
    assert checks["bitsandbytes backend"].status == PASS and "CPU" in checks["bitsandbytes backend"].detail
    assert checks["bitsandbytes NF4 matmul"].status == PASS


def test_bitsandbytes_import_failure_fails_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    check = doctor.check_bitsandbytes(opts())[0]
    assert check.status == FAIL and "import failed" in check.detail and check.commands[0].startswith("pip install")


# --- login, hub --------------------------------------------------------------------------------

def test_token_absent_warns_with_login_fix(env):
    check = doctor.check_hf_token(opts())[0]
    assert check.status == WARN and check.detail == "absent" and check.commands[0].startswith("hf auth login")
    assert doctor.check_hf_token(opts(model_path="tiny"))[0].status == PASS  # nothing gated


def test_token_from_env_or_file_is_present_never_shown(env, tmp_path):
    env.setenv("HF_TOKEN", SECRET)
    check = doctor.check_hf_token(opts())[0]
    assert check.status == PASS and check.detail == "present (HF_TOKEN)"
    env.delenv("HF_TOKEN")
    token_file = tmp_path / "hf" / "token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(SECRET + "\n")
    check = doctor.check_hf_token(opts())[0]
    assert check.status == PASS and "token file" in check.detail
    assert SECRET not in str(check)


def test_online_skipped_when_offline(env):
    env.setenv("HF_HUB_OFFLINE", "1")
    check = doctor.check_hub_online(opts(online=True))[0]
    assert check.status == WARN and "HF_HUB_OFFLINE" in check.fix
    assert doctor.check_hub_online(opts(online=False)) == []


def test_online_unreachable_hub_is_a_quick_warn(env):
    from huggingface_hub import HfApi

    def hang(*a, **k):
        import time

        time.sleep(30)

    env.setenv("HF_HUB_OFFLINE", "0")
    env.setattr(HfApi, "auth_check", hang)
    check = by_name(doctor.check_hub_online(opts(online=True, timeout_s=0.5)), "Model access")
    assert check.status == WARN and "unreachable" in check.detail


def test_online_gated_repo_fails_with_licence_fix(env):
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    def gated(self, repo_id, **kw):
        url = f"https://huggingface.co/api/models/{repo_id}/auth-check"
        response = httpx.Response(403, request=httpx.Request("GET", url))
        raise GatedRepoError(f"403 Client Error. Cannot access gated repo for url {url}.", response=response)

    env.setenv("HF_HUB_OFFLINE", "0")
    env.setenv("HF_TOKEN", SECRET)
    env.setattr(HfApi, "whoami", lambda self, token=None: {"name": "someone"})
    env.setattr(HfApi, "auth_check", gated)
    checks = doctor.check_hub_online(opts(online=True))
    assert by_name(checks, "Hub login").detail == "logged in as someone"
    access = by_name(checks, "Model access")
    assert access.status == FAIL and "accept the licence" in access.fix
    assert "https://huggingface.co/google/paligemma-3b-pt-448" in access.fix


# --- disk, java, corenlp, wandb, accelerate -------------------------------------------------------

def test_disk_checks_model_size_and_output_dir(env, tmp_path):
    checks = {c.name: c for c in doctor.check_disk(opts(output_dir=tmp_path / "run"))}
    need = memory.download_bytes(preset_config("google/paligemma-3b-pt-448"))
    assert f"needs ~{need / memory.GiB:.1f} GiB" in checks["Disk: HF cache"].detail
    assert checks["Disk: output dir"].status in (PASS, WARN)


def test_full_disk_fails(env, tmp_path):
    env.setattr(doctor, "_free_bytes", lambda path: (Path(path), 100 * 1024 ** 2))
    checks = {c.name: c for c in doctor.check_disk(opts(output_dir=tmp_path))}
    assert checks["Disk: HF cache"].status == FAIL and "HF_HOME" in checks["Disk: HF cache"].fix
    assert checks["Disk: output dir"].status == FAIL


def test_java_missing_warns_with_install_fix(env, tmp_path):
    env.setenv("PATH", str(tmp_path))
    check = doctor.check_java(opts())[0]
    assert check.status == WARN and "default-jre-headless" in check.commands[0]


def test_java_present_passes_and_broken_java_fails(env, tmp_path):
    assert doctor.check_java(opts())[0].status == PASS  # Java 17 is installed here
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\nexit 3\n")
    java.chmod(0o755)
    env.setenv("PATH", str(tmp_path))
    assert doctor.check_java(opts())[0].status == FAIL


def test_corenlp_missing_warns_with_download_fix():
    check = doctor.check_corenlp(opts())[0]  # pycocoevalcap ships without the CoreNLP jars
    assert check.status == WARN and check.commands[0] == f"curl -LO {doctor.CORENLP_URL}"
    assert check.commands[1].startswith("unzip -j stanford-corenlp-full-2015-12-09.zip")
    assert check.commands[1].endswith("spice/lib") and all(jar in check.commands[1] for jar in doctor.CORENLP_JARS)


def test_wandb_credentials(env, tmp_path):
    assert doctor.check_wandb(opts())[0].status == WARN
    env.setenv("WANDB_MODE", "offline")
    assert doctor.check_wandb(opts())[0].status == PASS
    env.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {WANDB_SECRET}\n")
    check = doctor.check_wandb(opts())[0]
    assert check.status == PASS and WANDB_SECRET not in str(check)


def test_accelerate_config(env, tmp_path, monkeypatch):
    assert doctor.check_accelerate_config(opts())[0].status == PASS  # one device: not needed
    fake_gpu(monkeypatch, "NVIDIA H100", 9, 0, 80, 79)
    monkeypatch.setattr(sys.modules["torch"].cuda, "device_count", lambda: 2)
    check = doctor.check_accelerate_config(opts())[0]
    assert check.status == WARN and "accelerate config" in check.fix
    path = tmp_path / "hf" / "accelerate" / "default_config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("compute_environment: LOCAL_MACHINE\n")
    assert doctor.check_accelerate_config(opts())[0].status == PASS


# --- the runner --------------------------------------------------------------------------------

def test_a_check_that_raises_becomes_a_fail_and_nothing_leaks(env):
    env.setenv("HF_TOKEN", SECRET)

    def broken(o):
        raise RuntimeError(f"boom with {SECRET}")

    checks = doctor.run_checks(opts(), {"broken": broken, "token": doctor.check_hf_token})
    assert checks[0].status == FAIL and "RuntimeError: boom" in checks[0].detail
    assert all(SECRET not in str(c) for c in checks)
    assert doctor.exit_code(checks) == 1
    assert doctor.exit_code([dataclasses.replace(checks[1])]) == 0


def test_full_run_is_fast_and_has_every_check(env, tmp_path):
    import time

    start = time.perf_counter()
    checks = doctor.run_checks(opts(model_path="tiny", output_dir=tmp_path))
    assert time.perf_counter() - start < 15
    names = {c.name for c in checks}
    for expected in ("Python", "torch", "peft", "torch build", "GPU", "bitsandbytes NF4 matmul",
                     "Hugging Face token", "Disk: HF cache", "Java", "Stanford CoreNLP (SPICE)",
                     "W&B credentials", "accelerate config"):
        assert expected in names
    assert doctor.exit_code(checks) == 0


# --- --error: real message texts ------------------------------------------------------------------

# Each text is a real message, quoted from where it was seen.
REAL_ERRORS = {
    # pytorch/pytorch#16417 (comment of 2024-03-13), a 24 GB card:
    "cuda-oom": (
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 0 has a total "
        "capacity of 23.65 GiB of which 11.06 MiB is free. Including non-PyTorch memory, this process has "
        "23.60 GiB memory in use. Of the allocated memory 22.90 GiB is allocated by PyTorch, and 194.87 MiB "
        "is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
    # bitsandbytes-foundation/bitsandbytes#719:
    "bnb-no-gpu": (
        "UserWarning: The installed version of bitsandbytes was compiled without GPU support. 8-bit "
        "optimizers, 8-bit multiplication, and GPU quantization are unavailable.\n"
        "  warn(\"The installed version of bitsandbytes was compiled without GPU support. \""),
    # bitsandbytes-foundation/bitsandbytes#828:
    "bnb-cuda-setup": (
        "RuntimeError: \n        CUDA Setup failed despite GPU being available. Please run the following "
        "command to get more information:\n\n        python -m bitsandbytes"),
    # city96/ComfyUI_ExtraModels#99 (a gated Gemma repo, no login):
    "hub-401": (
        "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-6545d8b33-604123b6654831703760a42c)\n\n"
        "Cannot access gated repo for url https://huggingface.co/google/gemma-2-2b-it/resolve/299a8560bedf22ed1c72a8a11e7dce4a7f9f51f8/.gitattributes.\n"
        "Access to model google/gemma-2-2b-it is restricted. You must have access to it and be authenticated "
        "to access it. Please log in."),
    # ariG23498/gemma3-object-detection#5 (token set, licence not accepted):
    "hub-403": (
        "403 Client Error. (Request ID: Root=1-6824e511-0a1d60376d4eefac56a9c456;85e8458c-a7d7-452d-b8fe-576bb259b500)\n\n"
        "Cannot access gated repo for url https://huggingface.co/google/gemma-3-4b-pt/resolve/main/config.json.\n"
        "Access to model google/gemma-3-4b-pt is restricted and you are not in the authorized list. Visit "
        "https://huggingface.co/google/gemma-3-4b-pt to ask for access."),
    # transformers 4.4x modeling_paligemma.py `_update_causal_mask` (training without token_type_ids):
    "token-type-ids": 'raise ValueError("Token type ids must be provided during training")\n'
                      "ValueError: Token type ids must be provided during training",
    # transformers trainer.py compute_loss (installed 5.24, line ~2200), batch built without suffix:
    "missing-labels": (
        "ValueError: The model did not return a loss from the inputs, only the following keys: logits. "
        "For reference, the inputs it received are input_ids,attention_mask,pixel_values."),
    # google/gemma_pytorch#24 (Gemma fine-tune log):
    "nan-loss": "{'loss': 5.2371, 'lr': 0.0002, 'epoch': 0.09}\n{'loss': nan, 'lr': 0.0002, 'epoch': 0.09}",
    # v-iashin/BMT#7 (pycocoevalcap METEOR); the same line is what PTBTokenizer raises here with PATH
    # lacking java:
    "java-missing": (
        "  File \"/home/njj/anaconda3/envs/mdvc/lib/python3.7/subprocess.py\", line 1551, in _execute_child\n"
        "    raise child_exception_type(errno_num, err_msg, err_filename)\n"
        "FileNotFoundError: [Errno 2] No such file or directory: 'java': 'java'"),
    # pycocoevalcap 1.2 Spice().compute_score on this machine (no network), stderr:
    "spice-corenlp": (
        "Downloading stanford-corenlp-3.6.0 for SPICE ...\nTraceback (most recent call last):\n"
        "urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>"),
    # huggingface/transformers#35581 (the transformers warning for keywords it drops):
    "bnb-kwarg-typo": (
        "Unused kwargs: ['bnb_8bit_quant_type', 'bnb_8bit_use_double_quant', 'bnb_8bit_compute_dtype']. "
        "These kwargs are not used in <class 'transformers.utils.quantization_config.BitsAndBytesConfig'>."),
    # PyTorch conv2d with float32 pixel_values into a half-precision SigLIP patch embedding:
    "dtype-mismatch": "RuntimeError: Input type (torch.cuda.FloatTensor) and weight type "
                      "(torch.cuda.HalfTensor) should be the same",
    # transformers training_args.py (installed 5.24, line ~1779):
    "no-bf16": "ValueError: Your setup doesn't support bf16/gpu. You need to assign use_cpu if you want "
               "to train the model on CPU.",
}


@pytest.mark.parametrize("key", sorted(REAL_ERRORS))
def test_each_known_error_is_recognised(key):
    found = diagnose.diagnose_error(REAL_ERRORS[key])
    assert [d.key for d in found] == [key]
    assert found[0].fix and found[0].cause and found[0].evidence


def test_every_known_pattern_has_a_real_text():
    assert {k.key for k in diagnose.KNOWN_ERRORS} == set(REAL_ERRORS)


def test_oom_fix_is_what_memory_estimate_says_fits():
    found = diagnose.diagnose_error(REAL_ERRORS["cuda-oom"], model_path="google/paligemma-3b-pt-896",
                                  batch_size=8, gradient_accumulation_steps=2)
    assert diagnose.gpu_capacity_from_log(REAL_ERRORS["cuda-oom"]) == int(23.65 * memory.GiB)
    plan = memory.fit(preset_config("google/paligemma-3b-pt-896"), memory.TrainSetup(batch_size=8),
                      int(23.65 * memory.GiB), effective_batch=16)
    assert plan.fits and plan.batch_size < 8
    assert plan.flags() in found[0].fix and "--gradient-accumulation-steps" in found[0].fix


def test_oom_when_the_estimate_says_it_fits_halves_the_batch():
    found = diagnose.diagnose_error(REAL_ERRORS["cuda-oom"], model_path="google/paligemma-3b-pt-448",
                                  batch_size=4, gradient_accumulation_steps=4)
    assert "--batch-size 2 --gradient-accumulation-steps 8" in found[0].fix
    assert "something else holds memory" in found[0].fix


def test_oom_without_capacity_gives_the_generic_fix():
    found = diagnose.diagnose_error("torch.OutOfMemoryError: CUDA out of memory.")
    assert found[0].key == "cuda-oom" and "memory-estimate --gpu-memory" in found[0].fix


def test_unknown_text_has_no_diagnosis_and_secrets_are_redacted(env):
    assert diagnose.diagnose_error("all good, loss 0.12") == []
    env.setenv("HF_TOKEN", SECRET)
    found = diagnose.diagnose_error(f"401 Client Error for token {SECRET}")
    assert found and SECRET not in str(found)
