"""`--push-to-hub`: checked before any work starts, uploaded in one commit once the work succeeded.

`check_push` makes no network call: the repo id is valid, offline mode is off and a token exists
(huggingface_hub's `get_token`: HF_TOKEN, or the file `hf auth login` writes), so nobody trains
for hours to learn they are not logged in. pgm only asks whether a token exists; HfApi reads it
itself, and pgm never prints or writes it.

`push_folder` writes the model card into the claimed output (paligemma_cli/outputs.py: staged
and recorded like every file pgm writes), creates the repo when it does not exist (`--hub-private`
applies then) and uploads the chosen files in one commit. Every failure is one PgmError naming the
repo and the fix; the local folder stays as it is (plus its card).
"""

from __future__ import annotations

import os
from pathlib import Path

from paligemma_cli.errors import PgmError
from paligemma_cli.events import Events
from paligemma_cli.outputs import Output, claim_output

CARD = "README.md"
LOGIN = "Run `hf auth login` (or set HF_TOKEN) with a token that has write access"


def check_push(repo_id: str) -> None:
    """Raise PgmError unless `repo_id` can be pushed to from here, as far as is known offline."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PgmError(f"--push-to-hub {repo_id!r} is not a Hugging Face repo id.",
                       "Give user/name or org/name (letters, digits, '-', '_' and '.').") from None
    if offline_mode():
        raise PgmError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so "
                       "nothing can be uploaded.", "Unset it for this run, or drop --push-to-hub.")
    try:
        token = get_token()
    except Exception as exc:  # an OIDC exchange that failed; its message is not echoed
        raise PgmError(f"--push-to-hub {repo_id}: getting a Hugging Face token failed ({type(exc).__name__}).",
                       f"Check HF_OIDC_RESOURCE. {LOGIN}.") from None
    if not token:
        raise PgmError(f"--push-to-hub {repo_id}: no Hugging Face token found.",
                       f"{LOGIN}, then run the command again.")


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (else TRANSFORMERS_OFFLINE) is set true, read as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def pgm_files(output: Output) -> list[str]:
    """The files to upload from a pgm train folder: the top-level files pgm recorded as written,
    never a folder (checkpoints/, best/, wandb/, tensorboard/), a hidden file (the marker, staging
    folders) or a temp file."""
    return sorted(n for n in output.names() if uploadable(output.path / n))


def folder_files(folder: Path) -> list[str]:
    """The files to upload from a folder pgm made whole (a merge): its visible top-level files."""
    return sorted(p.name for p in Path(folder).iterdir() if uploadable(p))


def uploadable(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and not path.name.startswith(".") \
        and not path.name.endswith((".tmp", ".lock"))


def push_folder(output: Output, repo_id: str, files: list[str], *, private: bool, card: str, retry: str,
                events: Events | None = None) -> str:
    """Write `card` as README.md in the claimed `output`, then upload it and `files` (names in it) to
    the model repo `repo_id` in one commit. `retry` says how to push again after a failure. Returns
    the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    events = events or Events()
    check_push(repo_id)
    folder = output.path
    output.write(CARD, card)
    names = sorted(set(files) | {CARD})
    events.phase_start(f"Pushing {len(names)} files to {repo_id}")
    kept = f"the results in {folder} are kept"
    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, commit_message=f"Upload {folder.name} with pgm",
                                 operations=[CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(folder / n))
                                             for n in names])
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        why = {401: "the hub refused the token (401 Unauthorized)",
               403: "the token may not write there (403 Forbidden: a read-only token, or not your namespace)"}
        fix = LOGIN if status in why else "Check the repo id and https://status.huggingface.co"
        raise PgmError(f"Pushing to {repo_id} failed: {why.get(status, f'the hub answered {status}')}; {kept}.",
                       f"{fix}, then {retry}.") from None
    except (HTTPError, OSError) as exc:  # no network, DNS, TLS, a timeout, offline mode
        raise PgmError(f"Pushing to {repo_id} failed: the Hugging Face Hub could not be reached "
                       f"({type(exc).__name__}); {kept}.", f"Check the network connection, then {retry}.") from None
    events.phase_end(f"one commit, {info.commit_url}")
    return info.commit_url


def push_training(output: Output, repo_id: str, *, private: bool, events: Events | None = None) -> str:
    """Push a finished pgm train folder (still claimed by the run): its card, then the files pgm
    wrote at its top level."""
    from paligemma_cli.hub.card import train_card

    return push_folder(output, repo_id, pgm_files(output), private=private, card=train_card(output.path, repo_id),
                       retry="rerun the same command with --resume (the run is complete: it loads and pushes "
                             "without training)", events=events)


def push_merge(folder: Path, repo_id: str, *, private: bool, command: str, events: Events | None = None) -> str:
    """Push a finished pgm merge folder: claimed again (the lock; the card staged and recorded as
    pgm's), its card, then every visible file in it."""
    from paligemma_cli.hub.card import merge_card

    with claim_output(Path(folder), "merge", resume=True, flag="--output") as output:
        return push_folder(output, repo_id, folder_files(folder), private=private,
                           card=merge_card(folder, repo_id, command),
                           retry="rerun the command with --overwrite (the merge is redone)", events=events)
