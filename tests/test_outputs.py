"""The one rule set for writing (`paligemma_cli/outputs.py`), with the faults injected for real:
kill -9 of a child process mid-write, two processes on one output, a write that fails with ENOSPC
or EROFS at the write call, a read-only folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paligemma_cli.errors import PgmError
from paligemma_cli.outputs import (check_file, check_output, claim_file, claim_output, read_marker,
                                   written_by_pgm)


def tree(root: Path) -> dict[str, str]:
    """Relative path -> content (or 'dir'), every entry, hidden ones included."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else p.read_bytes().decode(errors="replace")
            for p in sorted(root.rglob("*"))}


def earlier_eval(path: Path) -> dict[str, str]:
    """A folder holding a finished pgm eval (a.json, b/); returns its tree."""
    with claim_output(path, "eval") as output:
        output.write("a.json", "old a")
        with output.staged("b") as tmp:
            tmp.mkdir()
            (tmp / "part").write_text("old b")
    return tree(path)


def python(code: str, *args: str) -> subprocess.Popen:
    """A child process running `code` (it prints 'ready' when it holds what it must hold)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)


def run_pgm(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "paligemma_cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def one_error(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "Error:" in line]
    assert len(errors) == 1, text
    return errors[0]


# ----- own files only -----------------------------------------------------------------------------

def test_writes_are_staged_then_recorded_and_nothing_else_is_left(tmp_path):
    out = tmp_path / "out"
    with claim_output(out, "eval") as output:
        assert (out / ".pgm-lock").exists() and read_marker(out)["unfinished"]["pid"] == os.getpid()
        with output.staged("predictions.jsonl") as tmp:
            tmp.write_text("half")
            assert not (out / "predictions.jsonl").exists()  # nobody sees a half-written file
        with output.staged() as tmp:  # a folder whose entries become the output's
            (tmp / "config.json").write_text("{}")
            (tmp / "shards").mkdir()
    assert sorted(p.name for p in out.iterdir()) == [".pgm-run.json", "config.json", "predictions.jsonl", "shards"]
    marker = read_marker(out)
    assert marker["kind"] == "eval" and "unfinished" not in marker
    assert sorted(marker["written"]) == ["config.json", "predictions.jsonl", "shards"]


def test_a_folder_with_anything_pgm_did_not_write_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "out"
    earlier_eval(out)
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    for overwrite in (False, True):
        with pytest.raises(PgmError, match="holds notes.txt, which pgm did not write"):
            check_output(out, "eval", overwrite=overwrite)
        with pytest.raises(PgmError, match="holds notes.txt, which pgm did not write"):
            with claim_output(out, "eval", overwrite=overwrite):
                pass
    assert tree(out) == before
    (tmp_path / "file").write_text("a file")
    with pytest.raises(PgmError, match="file is a file"):
        check_output(tmp_path / "file", "eval", overwrite=True)
    with pytest.raises(PgmError, match="is a file"):
        with claim_output(tmp_path / "file", "eval", overwrite=True):
            pass
    assert (tmp_path / "file").read_text() == "a file"


def test_overwrite_replaces_exactly_the_earlier_runs_entries(tmp_path):
    out = tmp_path / "out"
    earlier_eval(out)
    with pytest.raises(PgmError, match="holds a previous pgm eval.*--overwrite"):
        check_output(out, "eval")
    with claim_output(out, "eval", overwrite=True) as output:
        assert (out / "a.json").read_text() == "old a"  # in place until the first new entry is written
        output.write("a.json", "new a")
    assert tree(out) == {".pgm-run.json": tree(out)[".pgm-run.json"], "a.json": "new a"}  # b/ went with its run
    assert read_marker(out)["written"] == ["a.json"]


@pytest.mark.parametrize("fault", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_overwrite_leaves_the_earlier_output_as_it_was(tmp_path, fault):
    out = tmp_path / "out"
    before = earlier_eval(out)
    with pytest.raises(type(fault)):
        with claim_output(out, "eval", overwrite=True) as output:
            output.write("a.json", "new a")  # swapped in: the earlier entries are set aside now
            output.record("log.jsonl")
            (out / "log.jsonl").write_text("half a li")
            assert not (out / "b").exists() and (out / ".pgm-previous" / "b").exists()
            raise fault
    assert tree(out) == before


def test_keep_makes_a_resumable_run_stay_when_it_later_fails(tmp_path):
    out = tmp_path / "out"
    with claim_output(out, "train") as output:
        output.record("checkpoints")
        (out / "checkpoints").mkdir()
        output.keep()
    earlier = tree(out)
    with pytest.raises(RuntimeError):
        with claim_output(out, "train", overwrite=True) as output:
            output.record("checkpoints")
            (out / "checkpoints" / "step-1").mkdir(parents=True)
            output.keep()  # the new run has a checkpoint: the earlier one is gone for good
            assert not (out / ".pgm-previous").exists()
            raise RuntimeError("NaN loss")
    assert (out / "checkpoints" / "step-1").is_dir() and tree(out) != earlier
    assert read_marker(out)["written"] == ["checkpoints"] and "unfinished" not in read_marker(out)
    check_output(out, "train", resume=True)  # it can be resumed
    with pytest.raises(PgmError, match="holds a pgm train, not a eval"):
        check_output(out, "eval", resume=True)


# ----- one writer ---------------------------------------------------------------------------------

HOLD = """import sys, time
from paligemma_cli.outputs import claim_output
with claim_output(sys.argv[1], "merge") as output:
    output.write("model.safetensors", "weights")
    print("ready", flush=True)
    time.sleep(300)
"""


def test_a_second_process_gets_one_line_naming_the_first_and_touches_nothing(tmp_path):
    out = tmp_path / "merged"
    holder = python(HOLD, str(out))
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = tree(tmp_path)
        with pytest.raises(PgmError, match=f"is in use: pgm merge \\(process {holder.pid}\\)"):
            check_output(out, "merge", overwrite=True)
        with pytest.raises(PgmError, match=f"process {holder.pid}"):
            with claim_output(out, "merge", overwrite=True):
                pass
        # The real command, as a user would start it: one line, exit 1, nothing touched.
        error = one_error(run_pgm("data", "synth", "vqav2", out, "-n", "1", "--overwrite", cwd=tmp_path))
        assert f"{out} is in use: pgm merge (process {holder.pid}) is writing there." in error
        assert tree(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # kill -9 freed the lock at once (the kernel drops it): the next claim works, and undoes the rest.
    with claim_output(out, "merge", overwrite=True) as output:
        assert any("interrupted pgm merge" in note and "model.safetensors" in note for note in output.notes)
        output.write("model.safetensors", "mine now")
    assert (out / "model.safetensors").read_text() == "mine now"


def test_a_killed_writer_is_undone_by_the_next_run_which_says_so(tmp_path):
    """kill -9 of a real `pgm data synth --overwrite` while it writes: the earlier data set stays whole
    (only moved aside), and the next run into the folder puts it back, removes the rest, and says so."""
    data = tmp_path / "data"
    assert run_pgm("data", "synth", "vqav2", data, "-n", "1", cwd=tmp_path).returncode == 0
    earlier = tree(data)
    child = subprocess.Popen([sys.executable, "-m", "paligemma_cli", "data", "synth", "vqav2", data, "-n", "3000",
                              "--overwrite"], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging, deadline = data / ".pgm-staging", time.monotonic() + 120
    while not (staging.exists() and sum(1 for _ in staging.rglob("*.jpg")) > 20):  # mid-write
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert staging.exists()  # the kill left its staging folder
    assert {k: v for k, v in tree(data).items() if not k.startswith(".pgm")} == \
        {k: v for k, v in earlier.items() if not k.startswith(".pgm")}  # the earlier data untouched

    rerun = run_pgm("data", "synth", "vqav2", data, "-n", "1", "--overwrite", "--seed", "1", cwd=tmp_path)
    text = " ".join((rerun.stdout + rerun.stderr).split())
    assert rerun.returncode == 0, text
    assert f"Removed what an interrupted pgm synth (process {child.pid}) left unfinished in {data}: .pgm-staging (" \
        in text
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".")) == [".pgm-run.json"]
    assert tree(data) != earlier and "val2014" in tree(data)


SET_ASIDE = """import sys, time
from paligemma_cli.outputs import claim_output
with claim_output(sys.argv[1], "eval", overwrite=True) as output:
    output.write("a.json", "new a")
    output.record("log.jsonl")
    open(output.path / "log.jsonl", "w").write("half a li")
    print("ready", flush=True)
    time.sleep(300)
"""


def test_an_overwrite_killed_after_setting_the_earlier_output_aside_is_put_back(tmp_path):
    out = tmp_path / "out"
    before = earlier_eval(out)
    child = python(SET_ASIDE, str(out))
    assert child.stdout.readline().strip() == "ready"
    assert (out / ".pgm-previous" / "b").is_dir() and (out / "a.json").read_text() == "new a"
    child.kill()
    child.wait()
    with pytest.raises(PgmError) as info:  # the next run, refused as the earlier output is back
        check_output(out, "eval")
    assert "holds a previous pgm eval" in info.value.message
    assert f"Removed what an interrupted pgm eval (process {child.pid}) left unfinished in {out}: a.json, " \
           "log.jsonl." in info.value.hint
    assert "Restored the earlier pgm eval output it had set aside: a.json, b." in info.value.hint
    assert tree(out) == before


# ----- disk errors --------------------------------------------------------------------------------

def _fail_half_way(code: int):
    """Path.write_bytes that writes half of the data and then fails as the OS would."""
    real = Path.write_bytes

    def write_bytes(self, data):
        real(self, bytes(data)[: len(data) // 2])
        raise OSError(code, os.strerror(code), str(self))

    return write_bytes


@pytest.mark.parametrize("code, needle", [(errno.ENOSPC, "No space left on device (it needs 12 bytes, "),
                                          (errno.EROFS, "Read-only file system.")])
def test_a_write_that_fails_is_one_line_and_leaves_the_earlier_output(tmp_path, monkeypatch, code, needle):
    out = tmp_path / "out"
    before = earlier_eval(out)
    monkeypatch.setattr(Path, "write_bytes", _fail_half_way(code))
    with pytest.raises(PgmError) as info:
        with claim_output(out, "eval", overwrite=True) as output:
            output.write("a.json", "new contents")
    assert f"Writing {out / 'a.json'} failed: {needle}" in str(info.value) and "\n" not in str(info.value)
    assert tree(out) == before
    # a new folder: the half-written file does not stay behind to make a rerun refuse
    with pytest.raises(PgmError):
        with claim_output(tmp_path / "new", "eval") as output:
            output.write("predictions.jsonl", "x" * 100)
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    with claim_output(tmp_path / "new", "eval") as output:  # no --overwrite needed
        output.write("predictions.jsonl", "x" * 100)


def test_any_disk_full_inside_a_claim_becomes_one_line(tmp_path):
    with pytest.raises(PgmError, match=r"Writing .*out failed: No space left on device \(it needs 3.0 GB, "):
        with claim_output(tmp_path / "out", "merge") as output:
            output.needed = 3_000_000_000
            with output.staged() as tmp:
                (tmp / "model.safetensors").write_bytes(b"12")
                raise OSError(errno.ENOSPC, "No space left on device")  # from a plain file.write()
    assert not (tmp_path / "out").exists()


def test_a_read_only_folder_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: use the immutable attribute
        if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i")
        undo = ["chattr", "-i", str(out)]
    else:
        out.chmod(0o555)
        undo = ["chmod", "755", str(out)]
    try:
        with pytest.raises(PgmError, match="is not writable"):
            check_output(out, "eval")
        with pytest.raises(PgmError, match="is not writable"):
            with claim_output(out, "eval"):
                pass
        with pytest.raises(PgmError, match="its folder is not writable"):
            check_file(out / "answers.jsonl")
    finally:
        subprocess.run(undo, check=True)
    assert list(out.iterdir()) == []


# ----- one-file outputs ---------------------------------------------------------------------------

def test_a_file_output_replaces_only_a_file_pgm_wrote_and_never_renames_the_users(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("mine")
    with pytest.raises(PgmError, match="already exists"):
        check_file(path)
    with pytest.raises(PgmError, match="was not written by pgm"):
        with claim_file(path, "predict", overwrite=True):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"] and path.read_text() == "mine"

    path.unlink()
    with claim_file(path, "predict") as target:
        target.write("one\n")
        assert not path.exists() and (tmp_path / ".answers.jsonl.pgm-lock").exists()
    assert path.read_text() == "one\n" and written_by_pgm(path)
    with pytest.raises(RuntimeError):
        with claim_file(path, "predict", overwrite=True) as target:
            target.write("two, cut sh")
            raise RuntimeError("generation failed")
    assert path.read_text() == "one\n"  # the earlier file, as it was
    with claim_file(path, "predict", overwrite=True) as target:
        target.write("two\n")
    assert path.read_text() == "two\n" and sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]
    path.write_text("two\nedited by hand\n")
    assert not written_by_pgm(path)
    with pytest.raises(PgmError, match="or was changed since"):
        check_file(path, overwrite=True)


def test_a_temp_file_of_a_killed_run_is_removed_and_reported(tmp_path):
    path = tmp_path / "answers.jsonl"
    (tmp_path / ".answers.jsonl.pgm-tmp").write_text("half a li")
    notes = check_file(path)
    assert notes == [f"Removed {tmp_path / '.answers.jsonl.pgm-tmp'}, left unfinished by an interrupted pgm run."]
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_without_locks_is_written_all_the_same(tmp_path, monkeypatch):
    """Some network and FUSE mounts refuse POSIX locks (ENOLCK): pgm writes there, unlocked."""
    import paligemma_cli.outputs as outputs

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(outputs.fcntl, "lockf", no_locks)
    check_output(tmp_path / "out", "eval")
    with claim_output(tmp_path / "out", "eval") as output:
        output.write("metrics.json", "{}")
    assert (tmp_path / "out" / "metrics.json").read_text() == "{}"


def test_the_marker_survives_a_reader_looking_mid_run(tmp_path):
    """What another tool sees while pgm writes: valid JSON at every moment (written aside, replaced)."""
    out = tmp_path / "out"
    with claim_output(out, "eval") as output:
        for i in range(3):
            output.record(f"part{i}")
            assert json.loads((out / ".pgm-run.json").read_text())["unfinished"]["pending"][-1] == f"part{i}"
            (out / f"part{i}").write_text("x")
