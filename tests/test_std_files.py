"""nodehost.std.file.read and nodehost.std.file.write on a real directory.

Each test's `tmp_path` is its run's work directory (`ctx.work_dir`); other directories
stand for the rest of the host, which a path may reach only through `[sandbox] file_roots`.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nodehost_std import files as files_module
from nodehost_std import package

from nodehost import NodeError
from nodehost.config import Sandbox
from std_support import Recorder, call, failure, run_std

READ = package.nodes["nodehost.std.file.read"]
WRITE = package.nodes["nodehost.std.file.write"]
CONTEXT: dict[str, Any] = {}  # what make_ctx gets in this test: its work_dir and sandbox


@pytest.fixture(autouse=True)
def work_dir(tmp_path: Path) -> Any:
    CONTEXT.update(work_dir=tmp_path, sandbox=Sandbox())
    yield tmp_path
    CONTEXT.clear()


def read(params: dict[str, Any], **context: Any) -> dict[str, Any]:
    return call(READ, params, **{**CONTEXT, **context})


def write(params: dict[str, Any], **context: Any) -> dict[str, Any]:
    return call(WRITE, params, **{**CONTEXT, **context})


def fail(spec: Any, params: dict[str, Any], **context: Any) -> NodeError:
    return failure(spec, params, **{**CONTEXT, **context})


# --- read ---------------------------------------------------------------------------------


def test_read_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("héllo\nworld\n", encoding="utf-8")
    result = read({"path": str(path)})
    assert result == {"content": "héllo\nworld\n", "sizeBytes": 13, "path": str(path)}


def test_read_json_and_base64(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"sensors": [1, 2], "on": true}')
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    assert read({"path": str(tmp_path / "config.json"), "format": "json"})["content"] == {
        "sensors": [1, 2],
        "on": True,
    }
    blob = read({"path": str(tmp_path / "blob.bin"), "format": "base64"})
    assert base64.b64decode(blob["content"]) == bytes(range(256))
    assert blob["sizeBytes"] == 256


def test_read_with_another_encoding(tmp_path: Path) -> None:
    (tmp_path / "legacy.txt").write_bytes("café".encode("latin-1"))
    assert read({"path": str(tmp_path / "legacy.txt"), "encoding": "latin-1"})["content"] == "café"
    error = fail(READ, {"path": str(tmp_path / "legacy.txt")})
    assert error.code == "E.STD.FILE.DECODE"
    assert str(tmp_path / "legacy.txt") in error.message
    assert "not valid utf-8 (byte 3" in error.message


def test_relative_paths_start_at_the_work_directory_and_are_reported_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "here.txt").write_text("x")
    monkeypatch.chdir("/")  # the daemon's own working directory plays no part
    assert read({"path": "sub/here.txt"}) == {
        "content": "x", "sizeBytes": 1, "path": str(tmp_path / "sub" / "here.txt")
    }
    assert write({"path": "./sub//there.txt", "content": "y"})["path"] == str(
        tmp_path / "sub" / "there.txt"
    )
    assert (tmp_path / "sub" / "there.txt").read_text() == "y"


def test_read_missing_file_names_the_path(tmp_path: Path) -> None:
    error = fail(READ, {"path": str(tmp_path / "missing.txt")})
    assert error.code == "E.STD.FILE.NOT_FOUND"
    assert error.message == f"cannot read {tmp_path / 'missing.txt'}: no such file or directory"
    assert error.remediation


def test_read_a_directory_fails(tmp_path: Path) -> None:
    error = fail(READ, {"path": str(tmp_path)})
    assert error.code == "E.STD.FILE.IS_DIRECTORY"
    assert str(tmp_path) in error.message


def test_read_over_max_bytes_fails(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_bytes(b"x" * 101)
    error = fail(READ, {"path": str(tmp_path / "big.log"), "maxBytes": 100})
    assert error.code == "E.STD.FILE.TOO_LARGE"
    assert f"{tmp_path / 'big.log'} is 101 bytes, over maxBytes (100)" in error.message
    assert read({"path": str(tmp_path / "big.log"), "maxBytes": 101})["sizeBytes"] == 101


def test_read_bad_json_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{\n  "a": 1,\n  "b": ]\n}\n')
    error = fail(READ, {"path": str(tmp_path / "broken.json"), "format": "json"})
    assert error.code == "E.STD.FILE.BAD_JSON"
    assert str(tmp_path / "broken.json") in error.message
    assert "line 3, column 8" in error.message


def test_permission_errors_are_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EACCES on open is reported as E.STD.FILE.PERMISSION (faked: CI runs as root)."""
    path = tmp_path / "secret.txt"
    path.write_text("x")

    def denied(file: str, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", file)

    monkeypatch.setattr(files_module, "open", denied, raising=False)
    error = fail(READ, {"path": str(path)})
    assert error.code == "E.STD.FILE.PERMISSION"
    assert error.message == f"cannot read {path}: permission denied"


def test_read_stops_when_cancelled(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(NodeError) as caught:
        read({"path": str(tmp_path / "data.txt")}, cancelled=True)
    assert caught.value.code == "E.RUNNER.CANCELLED"


# --- write --------------------------------------------------------------------------------


def test_write_text_records_an_artifact_and_leaves_no_temp_file(tmp_path: Path) -> None:
    recorder = Recorder()
    path = tmp_path / "out.txt"
    result = write({"path": str(path), "content": "héllo\n"}, recorder=recorder)
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert result == {"path": str(path), "sizeBytes": 7}
    assert recorder.artifacts == [
        {
            "resourceId": path.as_uri(),
            "type": "file",
            "sizeBytes": 7,
            "metadata": {"mode": "overwrite", "format": "text"},
        }
    ]
    assert os.listdir(tmp_path) == ["out.txt"]


def test_write_json_and_read_it_back(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    value = {"count": 3, "items": [{"id": "a"}, None, 1.5], "ok": False}
    write({"path": path, "content": value, "format": "json"})
    assert Path(path).read_text() == '{"count":3,"items":[{"id":"a"},null,1.5],"ok":false}\n'
    assert read({"path": path, "format": "json"})["content"] == value


def test_write_base64_writes_the_decoded_bytes(tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    encoded = base64.b64encode(bytes(range(256))).decode()
    result = write(
        {"path": str(path), "content": encoded[:50] + "\n" + encoded[50:], "format": "base64"}
    )
    assert path.read_bytes() == bytes(range(256))
    assert result["sizeBytes"] == 256
    error = fail(WRITE, {"path": str(path), "content": "not base64!", "format": "base64"})
    assert error.code == "E.STD.FILE.BAD_BASE64"
    assert str(path) in error.message
    assert path.read_bytes() == bytes(range(256))


def test_overwrite_replaces_the_file_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.txt"
    path.write_text("old")
    path.chmod(0o640)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: Any, dst: Any, **at: Any) -> None:
        events.append("replace")
        assert os.path.dirname(src) == "" and dst == "config.txt"  # relative to the dir fd
        assert (path.parent / src).read_text() == "new"
        assert path.read_text() == "old"  # readers see the old content until the rename
        real_replace(src, dst, **at)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with path.open() as reader:  # a reader that opened the old file keeps the old content
        write({"path": str(path), "content": "new"})
        assert reader.read() == "old"
    assert events == ["fsync file", "replace", "fsync dir"]
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the permissions are kept
    assert os.listdir(tmp_path) == ["config.txt"]


def test_a_failed_overwrite_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.txt"
    path.write_text("old")

    def no_space(src: Any, dst: Any, **at: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    error = fail(WRITE, {"path": str(path), "content": "new"})
    assert error.code == "E.STD.FILE.IO"
    assert error.message == f"cannot write {path}: no space left on device"
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["config.txt"]


def test_a_cancelled_write_does_not_touch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.txt"
    path.write_text("old")
    with pytest.raises(NodeError) as caught:
        write({"path": str(path), "content": "new"}, cancelled=True)
    assert caught.value.code == "E.RUNNER.CANCELLED"
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["config.txt"]


def test_append_adds_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    write({"path": str(path), "content": "one\n", "mode": "append"})
    result = write({"path": str(path), "content": "two\n", "mode": "append"})
    assert path.read_text() == "one\ntwo\n"
    assert result["sizeBytes"] == 8


def test_create_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "once.txt"
    assert write({"path": str(path), "content": "first", "mode": "create"})["sizeBytes"] == 5
    error = fail(WRITE, {"path": str(path), "content": "second", "mode": "create"})
    assert error.code == "E.STD.FILE.EXISTS"
    assert error.message == f"cannot write {path}: it already exists"
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["once.txt"]


def test_missing_directory_needs_make_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    error = fail(WRITE, {"path": str(path), "content": "x"})
    assert error.code == "E.STD.FILE.NOT_FOUND"
    assert str(tmp_path / "a" / "b") in error.message
    assert "makeDirs" in (error.remediation or "")
    write({"path": str(path), "content": "x", "makeDirs": True})
    assert path.read_text() == "x"


def test_writing_onto_a_directory_fails(tmp_path: Path) -> None:
    error = fail(WRITE, {"path": str(tmp_path), "content": "x"})
    assert error.code == "E.STD.FILE.IS_DIRECTORY"
    assert str(tmp_path) in error.message


def test_overwrite_through_a_symlink_writes_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "current.txt"
    link.symlink_to(target)
    write({"path": str(link), "content": "new"})
    assert link.is_symlink()
    assert target.read_text() == "new"


def test_text_that_the_encoding_cannot_hold_fails(tmp_path: Path) -> None:
    error = fail(
        WRITE, {"path": str(tmp_path / "a.txt"), "content": "naïve", "encoding": "ascii"}
    )
    assert error.code == "E.STD.FILE.ENCODE"
    assert "'ï' at position 2" in error.message
    assert not (tmp_path / "a.txt").exists()


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "params", "message"),
    [
        (READ, {}, "missing required field `path`"),
        (READ, {"path": ""}, "$.path"),
        (READ, {"path": "x", "format": "yaml"}, "$.format"),
        (READ, {"path": "x", "maxBytes": -1}, "$.maxBytes"),
        (READ, {"path": "x", "encoding": "klingon"}, "unknown encoding 'klingon'"),
        (READ, {"path": "x", "follow": True}, "unknown field `follow`"),
        (WRITE, {"path": "x"}, "missing required field `content`"),
        (WRITE, {"path": "x", "content": {"a": 1}}, "content must be a string"),
        (WRITE, {"path": "x", "content": 1, "format": "base64"}, "content must be a string"),
        (WRITE, {"path": "x", "content": "", "mode": "truncate"}, "$.mode"),
        (WRITE, {"path": "x", "content": "", "makeDirs": "yes"}, "$.makeDirs"),
    ],
)
def test_bad_parameters_are_rejected(spec: Any, params: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        spec.decode_params(params)
    assert message in str(caught.value)


def test_create_is_exclusive_even_when_the_file_appears_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "once.txt"
    path.write_text("first")
    # As if another writer created the file after the early existence check.
    monkeypatch.setattr(files_module, "_lexists", lambda directory, name: False)
    error = fail(WRITE, {"path": str(path), "content": "second", "mode": "create"})
    assert error.code == "E.STD.FILE.EXISTS"
    assert error.message == f"cannot write {path}: it already exists"
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["once.txt"]


def test_create_works_where_hard_links_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: Any, dst: Any, **at: Any) -> None:
        raise PermissionError(1, "Operation not permitted", src, None, dst)

    monkeypatch.setattr(os, "link", no_links)  # as on FAT (an SD card)
    path = tmp_path / "once.txt"
    write({"path": str(path), "content": "first", "mode": "create"})
    assert path.read_text() == "first"
    monkeypatch.setattr(files_module, "_lexists", lambda directory, name: False)
    error = fail(WRITE, {"path": str(path), "content": "second", "mode": "create"})
    assert error.code == "E.STD.FILE.EXISTS"
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["once.txt"]


def test_a_file_in_place_of_a_parent_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("I am a file")
    path = tmp_path / "logs" / "today" / "out.txt"
    for make_dirs in (False, True):
        error = fail(WRITE, {"path": str(path), "content": "x", "makeDirs": make_dirs})
        assert error.code == "E.STD.FILE.NOT_FOUND"
        assert str(path) in error.message
    assert "a part of the path is not a directory" in error.message
    error = fail(READ, {"path": str(tmp_path / "logs" / "x")})
    assert (
        error.message
        == f"cannot read {tmp_path / 'logs' / 'x'}: a part of the path is not a directory"
    )


# --- only the work directory and [sandbox] file_roots -------------------------------------


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of the host that is not the run's: it stands for the daemon's state, with
    a secret and the journal."""
    state = tmp_path_factory.mktemp("state")
    (state / "secret.txt").write_text("the daemon's secret")
    (state / "journal").mkdir()
    (state / "journal" / "segment-1").write_text("records")
    return state


def assert_untouched(state: Path) -> None:
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*")) == [
        "journal", "journal/segment-1", "secret.txt"]
    assert (state / "secret.txt").read_text() == "the daemon's secret"
    assert (state / "journal" / "segment-1").read_text() == "records"


def refused(spec: Any, params: dict[str, Any], **context: Any) -> NodeError:
    error = fail(spec, params, **context)
    assert error.code == "E.STD.FILE.OUTSIDE_ROOTS", error
    assert "[sandbox] file_roots" in error.message
    assert error.retryable is False
    return error


def test_reading_a_file_of_the_host_is_refused() -> None:
    error = refused(READ, {"path": "/etc/shadow"})
    assert error.message.startswith("cannot read /etc/shadow: it is outside the run's work "
                                    "directory and [sandbox] file_roots (allowed: ")
    assert "file_roots" in (error.remediation or "")


@pytest.mark.parametrize("path", ["../secret.txt", "sub/../../secret.txt", "sub/../x.txt",
                                  "{work}/../secret.txt"])
def test_dot_dot_is_refused_wherever_it_leads(tmp_path: Path, path: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.txt").write_text("x")
    path = path.format(work=tmp_path)
    assert "'..' is not allowed" in refused(READ, {"path": path}).message
    assert "'..' is not allowed" in refused(WRITE, {"path": path, "content": "x"}).message
    assert not (tmp_path.parent / "secret.txt").exists()


def test_an_absolute_path_outside_the_roots_is_refused(outside: Path) -> None:
    error = refused(READ, {"path": str(outside / "secret.txt")})
    assert str(outside / "secret.txt") in error.message
    refused(WRITE, {"path": str(outside / "journal" / "segment-2"), "content": "forged"})
    refused(WRITE, {"path": str(outside / "journal" / "segment-1"), "content": "forged",
                    "mode": "append"})
    refused(WRITE, {"path": str(outside / "journal" / "new" / "x"), "content": "forged",
                    "makeDirs": True})
    assert_untouched(outside)


def test_a_file_in_a_configured_root_is_read_and_written(outside: Path) -> None:
    sandbox = Sandbox(file_roots=[str(outside)])
    result = read({"path": str(outside / "secret.txt")}, sandbox=sandbox)
    assert result["content"] == "the daemon's secret"
    write({"path": str(outside / "shared.txt"), "content": "hello"}, sandbox=sandbox)
    assert (outside / "shared.txt").read_text() == "hello"
    refused(READ, {"path": str(outside / "secret.txt")})  # not without it


def test_a_root_is_known_by_its_configured_path_and_its_real_one(
    tmp_path: Path, outside: Path
) -> None:
    alias = tmp_path.parent / f"{tmp_path.name}-alias"
    alias.symlink_to(outside)  # the operator's link: theirs to follow
    sandbox = Sandbox(file_roots=[str(alias)])
    for path in (alias / "secret.txt", outside / "secret.txt"):
        assert read({"path": str(path)}, sandbox=sandbox)["content"] == "the daemon's secret"


def test_a_relative_path_without_a_work_directory_is_refused() -> None:
    error = refused(READ, {"path": "notes.txt"}, work_dir=None)
    assert "this host gives the run none" in error.message


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_a_symlink_in_the_work_directory_may_not_lead_outside(
    tmp_path: Path, outside: Path, target: str
) -> None:
    secret = outside / "secret.txt"
    journal = outside / "journal"
    if target == "relative":
        secret = Path(os.path.relpath(secret, tmp_path))
        journal = Path(os.path.relpath(journal, tmp_path))
    (tmp_path / "notes.txt").symlink_to(secret)
    (tmp_path / "logs").symlink_to(journal, target_is_directory=True)
    (tmp_path / "new.txt").symlink_to(journal / "segment-2")  # dangling: would create it
    error = refused(READ, {"path": "notes.txt"})
    assert f"the symlink {tmp_path / 'notes.txt'} leads " in error.message
    refused(WRITE, {"path": "notes.txt", "content": "forged"})
    refused(WRITE, {"path": "logs/segment-1", "content": "forged", "mode": "append"})
    refused(WRITE, {"path": "logs/segment-2", "content": "forged"})
    refused(WRITE, {"path": "new.txt", "content": "forged", "mode": "create"})
    refused(READ, {"path": "logs/segment-1"})
    assert_untouched(outside)
    assert (tmp_path / "notes.txt").is_symlink()  # the links themselves are left alone


def test_symlinks_that_stay_inside_the_work_directory_are_followed(tmp_path: Path) -> None:
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-1" / "out.json").write_text('{"ok": true}')
    (tmp_path / "latest").symlink_to("run-1")
    (tmp_path / "run-1" / "self").symlink_to(tmp_path / "run-1" / "out.json")
    (tmp_path / "run-1" / "up").symlink_to("../run-1/out.json")
    for path in ("latest/out.json", "latest/self", "latest/up", str(tmp_path / "latest/up")):
        assert read({"path": path, "format": "json"})["content"] == {"ok": True}, path
    write({"path": "latest/next.txt", "content": "x"})
    assert (tmp_path / "run-1" / "next.txt").read_text() == "x"


def test_a_symlink_loop_fails_instead_of_hanging(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    error = fail(READ, {"path": "a"})
    assert error.code == "E.STD.FILE.IO"
    assert "symbolic links" in error.message


def test_a_path_with_a_nul_byte_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.path"):
        READ.decode_params({"path": "a\x00b"})


# --- in a host: a run's nodes share its work directory ------------------------------------


@pytest.mark.anyio
async def test_a_file_written_by_one_node_is_read_by_a_later_node_of_the_run(
    outside: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shared = tmp_path_factory.mktemp("shared")
    (shared / "input.txt").write_text("from the operator's directory")
    run, work_dir = await run_std(
        [
            {"id": "w", "type": "nodehost.std.file.write",
             "parameters": {"path": "out/result.json", "content": {"n": 1}, "format": "json",
                            "makeDirs": True}},
            {"id": "r", "type": "nodehost.std.file.read",
             "parameters": {"path": "out/result.json", "format": "json"}},
            {"id": "shared", "type": "nodehost.std.file.read",
             "parameters": {"path": str(shared / "input.txt")}},
            {"id": "secret", "type": "nodehost.std.file.read",
             "parameters": {"path": str(outside / "secret.txt")}},
            {"id": "journal", "type": "nodehost.std.file.write",
             "parameters": {"path": str(outside / "journal" / "segment-1"), "content": "x"}},
        ],
        edges=[("w", "r")],
        sandbox=Sandbox(file_roots=[str(shared)]),
    )
    tasks = run.tasks
    for ok in ("w", "r", "shared"):
        assert tasks[ok].status == "succeeded", tasks[ok].error
    assert tasks["w"].result == {"path": str(work_dir / "out" / "result.json"), "sizeBytes": 8}
    assert tasks["r"].result is not None and tasks["r"].result["content"] == {"n": 1}
    assert tasks["shared"].result is not None
    assert tasks["shared"].result["content"] == "from the operator's directory"
    for refused_id in ("secret", "journal"):
        error = tasks[refused_id].error
        assert error is not None and error.code == "E.STD.FILE.OUTSIDE_ROOTS", refused_id
        assert "[sandbox] file_roots" in error.message
    assert_untouched(outside)
