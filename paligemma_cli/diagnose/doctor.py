"""`pgm doctor`: the troubleshooting notes as checks, each PASS / WARN / FAIL with its fix.

Each check is a small function returning `Check`s (the exact fix for anything not passing).
`run_checks` runs them all and turns a check that itself raises into a FAIL carrying its
message, so the doctor never crashes. Heavy imports (torch, bitsandbytes, huggingface_hub)
happen inside the checks that need them, so the whole run takes seconds.

Secrets: tokens are read only to say "present" / "absent"; every text leaving the doctor goes
through `redact`, which blanks the values of the token variables and of the token file.
`pgm doctor --error` lives in `diagnose.known_errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from paligemma_cli.config import DEFAULT_MODEL, TrainConfig
from paligemma_cli.metrics.captioning import CORENLP_JARS, CORENLP_URL  # one definition, re-exported

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
DIST_NAME = "paligemma-cli"
CHECKED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")
SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
HF_LOGIN = "hf auth login  # or: export HF_TOKEN=..."  # the comment keeps the line copyable
JAVA_REINSTALL = ("sudo apt-get install --reinstall -y default-jre-headless",)
GiB = 1024 ** 3


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""  # prose; the commands it refers to come separately, one per line, to copy
    commands: tuple[str, ...] = ()


@dataclass(frozen=True)
class DoctorOptions:
    model_path: str = DEFAULT_MODEL
    output_dir: Path = TrainConfig.output_dir
    online: bool = False
    timeout_s: float = 5.0


# --- environment helpers (read at call time so tests can change the environment) -----------

def hf_home() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(os.environ.get("HF_HOME", default)).expanduser()


def hf_token_file() -> Path:
    return Path(os.environ.get("HF_TOKEN_PATH", hf_home() / "token")).expanduser()


def hf_hub_cache() -> Path:
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(env).expanduser() if env else hf_home() / "hub"


def _token_file_text() -> str:
    try:
        return hf_token_file().read_text().strip()
    except OSError:
        return ""


def hf_token() -> tuple[str | None, str]:
    """(token, where it came from); the token must never be shown, only its source."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip(), var
    text = _token_file_text()
    if text:
        return text, f"token file {hf_token_file()}"
    return None, ""


def redact(text: str) -> str:
    """Blank every secret pgm can know of (env tokens, the HF token file) out of `text`."""
    secrets = [os.environ.get(v, "").strip() for v in SECRET_VARS] + [_token_file_text()]
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _free_bytes(path: Path) -> tuple[Path, int]:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    probe = Path(path).expanduser().resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


# --- checks -------------------------------------------------------------------------------

def _requirements() -> dict[str, str]:
    """pgm's declared dependency ranges (its installed metadata: pyproject is the one source)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    out = {}
    for line in metadata.requires(DIST_NAME) or []:
        req = Requirement(line)
        if req.marker is None:
            out[req.name.lower()] = str(req.specifier)
    return out


def check_python(opts: DoctorOptions) -> list[Check]:
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    spec = metadata.metadata(DIST_NAME).get("Requires-Python") or ">=3.10"
    version = ".".join(map(str, sys.version_info[:3]))
    if SpecifierSet(spec).contains(version):
        return [Check("Python", PASS, f"{version} ({sys.executable})")]
    return [Check("Python", FAIL, f"{version}; pgm needs {spec}",
                  f"Create the venv with a Python {spec}:", ("python3.11 -m venv .venv && make install",))]


def check_packages(opts: DoctorOptions) -> list[Check]:
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    wanted = _requirements()
    checks = []
    for name in CHECKED_PACKAGES:
        spec = wanted.get(name, "")
        pin = f"{name}{spec}"
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            checks.append(Check(name, FAIL, "not installed", "Install a supported version:", (f"pip install '{pin}'",)))
            continue
        if spec and not SpecifierSet(spec).contains(version, prereleases=True):
            checks.append(Check(name, FAIL, f"{version}; pgm supports {spec}", "Install a supported version:",
                                (f"pip install '{pin}'",)))
        else:
            checks.append(Check(name, PASS, f"{version}" + (f" (supported: {spec})" if spec else "")))
    return checks


def check_torch_build(opts: DoctorOptions) -> list[Check]:
    import torch

    cuda = torch.version.cuda
    build = f"torch {torch.__version__}, " + (f"CUDA {cuda} build" if cuda else "CPU-only build")
    has_driver = shutil.which("nvidia-smi") is not None
    if cuda and torch.cuda.is_available():
        return [Check("torch build", PASS, f"{build}; {torch.cuda.device_count()} GPU(s) usable")]
    if cuda:
        return [Check("torch build", FAIL, f"{build}, but no GPU is usable",
                      f"The NVIDIA driver must support CUDA {cuda} (or install the torch wheel "
                      "matching your driver); see what it supports with:", ("nvidia-smi",))]
    if has_driver:
        return [Check("torch build", FAIL, f"{build}, but nvidia-smi is present",
                      "Install the CUDA build of torch:",
                      ('make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"',))]
    return [Check("torch build", WARN, f"{build}; no NVIDIA driver found",
                  "Fine for `--model-path tiny`; real QLoRA needs an NVIDIA GPU and CUDA torch.")]


def check_gpus(opts: DoctorOptions) -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        return [Check("GPU", WARN, "no CUDA GPU visible",
                      "On CPU only `--model-path tiny` is practical; train real models on a GPU.")]
    checks = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        major, minor = props.major, props.minor
        free, total = torch.cuda.mem_get_info(i)
        bf16 = major >= 8
        detail = (f"{props.name}, compute {major}.{minor}, bf16 {'yes' if bf16 else 'no'}, "
                  f"{_gib(total)} total, {_gib(free)} free")
        status, fix = PASS, ""
        if major < 7 or (major == 7 and minor < 5):
            status, fix = WARN, ("bitsandbytes 4-bit kernels are tested on compute >= 7.5 (Turing+); "
                                 "expect slow or failing QLoRA on this card.")
        elif not bf16:
            status, fix = WARN, "No bf16: pgm computes in fp16 here (--compute-dtype auto)."
        advice = _fit_advice(opts.model_path, free)
        commands: tuple[str, ...] = ()
        if advice:
            status, fix = WARN, (fix + " " if fix else "") + advice
            commands = (f"pgm memory-estimate --model-path {opts.model_path} --gpu-memory {free / GiB:.0f}GB",)
        checks.append(Check(f"GPU {i}", status, detail, fix, commands))
    return checks


def _fit_advice(model_path: str, free: int) -> str:
    """What to change when pgm train's defaults for `model_path` do not fit `free` bytes."""
    from paligemma_cli.diagnose import memory

    config = memory.load_config(model_path, required=False)
    setup = memory.TrainSetup()
    need = memory.estimate(config, setup).total if config is not None else 0
    if need <= free:
        return ""
    effective = setup.batch_size * TrainConfig.gradient_accumulation_steps
    plan = memory.fit(config, setup, free, effective_batch=effective)
    then = f"use {plan.flags()}" if plan.fits else plan.reason
    return f"{model_path} with the default settings needs ~{_gib(need)}; {then}. See what fits with:"


def check_bitsandbytes(opts: DoctorOptions) -> list[Check]:
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its harmless "kernels-community" notice
            import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or RuntimeError from a broken CUDA setup
        return [Check("bitsandbytes", FAIL, f"import failed: {type(exc).__name__}: {exc}",
                      "Reinstall it; the second command shows which binary it loads:",
                      ("pip install -U 'bitsandbytes>=0.46'", "python -m bitsandbytes"))]
    import torch

    checks = [Check("bitsandbytes import", PASS, f"bitsandbytes {bnb.__version__}")]
    from bitsandbytes import cextension

    backend = getattr(cextension, "BNB_BACKEND", "unknown")
    lib = type(getattr(cextension, "lib", None)).__name__
    if "Mock" in lib or "ErrorHandler" in lib:
        checks.append(Check("bitsandbytes backend", FAIL if backend in ("CUDA", "ROCm") else WARN,
                            f"{backend}: native library not loaded ({lib})",
                            "Reinstall bitsandbytes matching your torch CUDA version; this says why "
                            "the library did not load:", ("python -m bitsandbytes",)))
    else:
        checks.append(Check("bitsandbytes backend", PASS, f"{backend} ({lib})"))
    checks.append(_nf4_matmul(bnb, torch))
    return checks


def _nf4_matmul(bnb, torch) -> Check:
    """Quantise a small weight to NF4 (double quant) and multiply, as Linear4bit does."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 256, generator=gen).to(device=device, dtype=dtype)
    x = torch.randn(4, 256, generator=gen).to(device=device, dtype=dtype)
    packed, state = bnb.functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    out = bnb.matmul_4bit(x, packed.t(), quant_state=state)
    ref = x.float() @ bnb.functional.dequantize_4bit(packed, state).float().t()
    err = ((out.float() - ref).norm() / ref.norm()).item()
    if out.shape == (4, 128) and err < 2e-2:
        return Check("bitsandbytes NF4 matmul", PASS,
                     f"4-bit matmul on {device} ({dtype}), rel. error {err:.1e}")
    return Check("bitsandbytes NF4 matmul", FAIL, f"wrong result on {device}: rel. error {err:.2f}",
                 "Reinstall bitsandbytes:", ("pip install -U --force-reinstall bitsandbytes",))


def check_hf_token(opts: DoctorOptions) -> list[Check]:
    token, source = hf_token()
    if token:
        return [Check("Hugging Face token", PASS, f"present ({source})")]
    local = _is_local(opts.model_path)
    return [Check("Hugging Face token", PASS if local else WARN, "absent",
                  "" if local else f"Accept the licence at https://huggingface.co/{opts.model_path}, then:",
                  () if local else (HF_LOGIN,))]


def _is_local(model_path: str) -> bool:
    from paligemma_cli.model.tiny import is_tiny

    return is_tiny(model_path) or Path(model_path).expanduser().exists()


def _with_timeout(func: Callable, timeout_s: float):
    """Run `func` in a daemon thread; (result, error), or raise TimeoutError after timeout_s."""
    box: dict = {}

    def target():
        try:
            box["result"] = func()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _hub_failure(exc: BaseException) -> tuple[str, str]:
    name = type(exc).__name__
    text = f"{name}: {exc}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if name == "GatedRepoError" or status == 403 or "403" in text:
        return FAIL, "gated"
    if status == 401 or "401" in text:
        return FAIL, "unauthorized"
    if name in ("RepositoryNotFoundError",) or status == 404:
        return FAIL, "not found"
    return WARN, "unreachable"


def check_hub_online(opts: DoctorOptions) -> list[Check]:
    if not opts.online:
        return []
    if _offline():
        return [Check("Hub access", WARN, "skipped: HF_HUB_OFFLINE is set",
                      "Unset HF_HUB_OFFLINE to check the login and model access online.")]
    from huggingface_hub import HfApi

    token, _source = hf_token()
    api = HfApi()
    checks = []
    if token:
        try:
            info = _with_timeout(lambda: api.whoami(token=token), opts.timeout_s)
            checks.append(Check("Hub login", PASS, f"logged in as {info.get('name', '?')}"))
        except BaseException as exc:
            status, kind = _hub_failure(exc)
            if kind == "unauthorized":
                checks.append(Check("Hub login", FAIL, "the token is invalid or expired",
                                    "Create a new read token at https://huggingface.co/settings/tokens, "
                                    "then log in with it:", (HF_LOGIN,)))
            else:
                checks.append(Check("Hub login", WARN, f"hub unreachable ({type(exc).__name__})",
                                    "Check the network / proxy; training from the local cache still works."))
    if _is_local(opts.model_path):
        return checks + [Check("Model access", PASS, f"{opts.model_path} is local")]
    repo = opts.model_path
    try:
        _with_timeout(lambda: api.auth_check(repo, token=token or False), opts.timeout_s)
        checks.append(Check("Model access", PASS, f"{repo}: access granted"))
    except BaseException as exc:
        status, kind = _hub_failure(exc)
        fixes = {
            "gated": (f"no access to the gated repo {repo}",
                      f"Open https://huggingface.co/{repo}, accept the licence with the account "
                      "of your token, and wait for the grant.", ()),
            "unauthorized": (f"{repo} needs a login",
                             f"Accept the licence at https://huggingface.co/{repo}, then:", (HF_LOGIN,)),
            "not found": (f"{repo} does not exist", "Check --model-path (e.g. google/paligemma-3b-pt-448).", ()),
            "unreachable": (f"hub unreachable ({type(exc).__name__})",
                            "Check the network / proxy, or pass a local model folder.", ()),
        }
        checks.append(Check("Model access", status, *fixes[kind]))
    return checks


def check_disk(opts: DoctorOptions) -> list[Check]:
    from paligemma_cli.diagnose import memory

    checks = []
    config = None if _is_local(opts.model_path) else memory.load_config(opts.model_path, required=False)
    cache = hf_hub_cache()
    where, free = _free_bytes(cache)
    cached = (cache / ("models--" + opts.model_path.replace("/", "--")) / "snapshots").is_dir()
    if _is_local(opts.model_path) or cached:
        checks.append(Check("Disk: HF cache", PASS, f"{_gib(free)} free at {where}; model already on disk"))
    elif config is None:
        checks.append(Check("Disk: HF cache", PASS if free > 20 * GiB else WARN,
                            f"{_gib(free)} free at {where}; model size unknown",
                            "" if free > 20 * GiB else "Free space or set HF_HOME to a larger disk."))
    else:
        need = memory.download_bytes(config)
        ok = free > need * 1.1
        checks.append(Check("Disk: HF cache", PASS if ok else FAIL,
                            f"{_gib(free)} free at {where}; {opts.model_path} needs ~{_gib(need)}",
                            "" if ok else "Free space, or point HF_HOME / HF_HUB_CACHE at a larger disk."))
    where, free = _free_bytes(Path(opts.output_dir))
    base = memory.load_config(opts.model_path, required=False)
    if base is None:
        checks.append(Check("Disk: output dir", PASS if free > GiB else WARN, f"{_gib(free)} free at {where}",
                            "" if free > GiB else "Free at least 1 GiB or choose another --output-dir."))
        return checks
    setup = memory.TrainSetup()
    run_need = max(GiB, memory.output_bytes(base, setup))
    merged = memory.merged_bytes(base)
    if free < run_need:
        status, fix = FAIL, f"Free {_gib(run_need)} or choose another --output-dir."
    elif free < run_need + merged:
        status, fix = WARN, f"Training fits; `pgm merge` also writes ~{_gib(merged)} (bf16 model)."
    else:
        status, fix = PASS, ""
    checks.append(Check("Disk: output dir", status,
                        f"{_gib(free)} free at {where}; a run needs ~{_gib(run_need)}, a merged model "
                        f"~{_gib(merged)}", fix))
    return checks


def check_java(opts: DoctorOptions) -> list[Check]:
    java = shutil.which("java")
    if java is None:
        return [Check("Java", WARN, "java not found on PATH (COCO captioning: PTB tokenizer, METEOR)",
                      "Only the coco task needs it; any Java >= 8 on PATH will do, e.g.:",
                      ("sudo apt-get install -y default-jre-headless",))]
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check("Java", FAIL, f"{java} does not run: {exc}", "Reinstall Java:", JAVA_REINSTALL)]
    line = (proc.stderr or proc.stdout).strip().splitlines()
    if proc.returncode != 0 or not line:
        return [Check("Java", FAIL, f"{java} -version failed (exit {proc.returncode})",
                      "Reinstall Java:", JAVA_REINSTALL)]
    return [Check("Java", PASS, f"{line[0]} ({java})")]


def check_corenlp(opts: DoctorOptions) -> list[Check]:
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return [Check("Stanford CoreNLP (SPICE)", WARN, "pycocoevalcap not installed",
                      "Install it:", ("pip install pycocoevalcap",))]
    lib = Path(list(spec.submodule_search_locations)[0]) / "spice" / "lib"
    missing = [j for j in CORENLP_JARS if not (lib / j).exists()]
    if not missing:
        return [Check("Stanford CoreNLP (SPICE)", PASS, f"CoreNLP 3.6.0 jars in {lib}")]
    members = " ".join(shlex.quote(f"*/{j}") for j in CORENLP_JARS)  # unzip's pattern, quoted for the shell
    unzip = f"unzip -j {CORENLP_URL.rsplit('/', 1)[1]} {members} -d {shlex.quote(str(lib))}"
    what = "both CoreNLP 3.6.0 jars" if len(missing) == len(CORENLP_JARS) else missing[0]
    return [Check("Stanford CoreNLP (SPICE)", WARN, f"missing {what} (SPICE only)",
                  "Unpack CoreNLP 3.6.0's two jars into pycocoevalcap's spice/lib:",
                  (f"curl -LO {CORENLP_URL}", unzip))]


def check_wandb(opts: DoctorOptions) -> list[Check]:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if os.environ.get("WANDB_API_KEY", "").strip():
        return [Check("W&B credentials", PASS, "present (WANDB_API_KEY)")]
    netrc = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        if "api.wandb.ai" in netrc.read_text():
            return [Check("W&B credentials", PASS, f"present ({netrc})")]
    except OSError:
        pass
    if mode in ("offline", "disabled", "dryrun"):
        return [Check("W&B credentials", PASS, f"absent; WANDB_MODE={mode} needs none")]
    return [Check("W&B credentials", WARN, "absent (only --use-wandb needs them)",
                  "Log in (or set WANDB_API_KEY, or WANDB_MODE=offline):",
                  ("wandb login",))]


def check_accelerate_config(opts: DoctorOptions) -> list[Check]:
    path = hf_home() / "accelerate" / "default_config.yaml"
    if path.exists():
        return [Check("accelerate config", PASS, f"present ({path})")]
    gpus = 0
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        return [Check("accelerate config", PASS, "absent; not needed on one device")]
    return [Check("accelerate config", WARN, f"absent, and {gpus} GPUs are visible",
                  "Write a config once (or run `accelerate config` to answer its questions), then "
                  "launch training through accelerate:",
                  ("accelerate config default", "accelerate launch -m paligemma_cli train ..."))]


CHECKS: dict[str, Callable[[DoctorOptions], list[Check]]] = {
    "Python": check_python,
    "packages": check_packages,
    "torch build": check_torch_build,
    "GPU": check_gpus,
    "bitsandbytes": check_bitsandbytes,
    "Hugging Face token": check_hf_token,
    "Hub access": check_hub_online,
    "disk": check_disk,
    "Java": check_java,
    "Stanford CoreNLP (SPICE)": check_corenlp,
    "W&B credentials": check_wandb,
    "accelerate config": check_accelerate_config,
}


def _redacted(check: Check) -> Check:
    return dataclasses.replace(check, detail=redact(check.detail), fix=redact(check.fix),
                               commands=tuple(redact(c) for c in check.commands))


def run_checks(opts: DoctorOptions, checks: dict | None = None,
               on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check; one that raises becomes a FAIL with its message (never a crash)."""
    results = []
    for name, func in (checks or CHECKS).items():
        try:
            found = func(opts)
        except BaseException as exc:  # noqa: BLE001 - the doctor must report, not crash
            if isinstance(exc, KeyboardInterrupt):
                raise
            found = [Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}",
                           "Please report it with the output of:", ("pgm doctor --json",))]
        for check in found:
            check = _redacted(check)
            results.append(check)
            if on_check:
                on_check(check)
    return results


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0
