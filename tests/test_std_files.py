"""nodehost.std.file.read and nodehost.std.file.write on a real directory."""

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
from std_support import Recorder, call, failure

READ = package.nodes["nodehost.std.file.read"]
WRITE = package.nodes["nodehost.std.file.write"]


def read(params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return call(READ, params, **kwargs)


def write(params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return call(WRITE, params, **kwargs)


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
    error = failure(READ, {"path": str(tmp_path / "legacy.txt")})
    assert error.code == "E.STD.FILE.DECODE"
    assert str(tmp_path / "legacy.txt") in error.message
    assert "not valid utf-8 (byte 3" in error.message


def test_relative_paths_are_reported_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("here.txt").write_text("x")
    assert read({"path": "here.txt"})["path"] == str(tmp_path / "here.txt")


def test_read_missing_file_names_the_path(tmp_path: Path) -> None:
    error = failure(READ, {"path": str(tmp_path / "missing.txt")})
    assert error.code == "E.STD.FILE.NOT_FOUND"
    assert error.message == f"cannot read {tmp_path / 'missing.txt'}: no such file or directory"
    assert error.remediation


def test_read_a_directory_fails(tmp_path: Path) -> None:
    error = failure(READ, {"path": str(tmp_path)})
    assert error.code == "E.STD.FILE.IS_DIRECTORY"
    assert str(tmp_path) in error.message


def test_read_over_max_bytes_fails(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_bytes(b"x" * 101)
    error = failure(READ, {"path": str(tmp_path / "big.log"), "maxBytes": 100})
    assert error.code == "E.STD.FILE.TOO_LARGE"
    assert f"{tmp_path / 'big.log'} is 101 bytes, over maxBytes (100)" in error.message
    assert read({"path": str(tmp_path / "big.log"), "maxBytes": 101})["sizeBytes"] == 101


def test_read_bad_json_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{\n  "a": 1,\n  "b": ]\n}\n')
    error = failure(READ, {"path": str(tmp_path / "broken.json"), "format": "json"})
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
    error = failure(READ, {"path": str(path)})
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
    error = failure(WRITE, {"path": str(path), "content": "not base64!", "format": "base64"})
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

    def replace(src: Any, dst: Any) -> None:
        events.append("replace")
        assert Path(src).parent == path.parent and Path(src).read_text() == "new"
        assert path.read_text() == "old"  # readers see the old content until the rename
        real_replace(src, dst)

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

    def no_space(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    error = failure(WRITE, {"path": str(path), "content": "new"})
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
    error = failure(WRITE, {"path": str(path), "content": "second", "mode": "create"})
    assert error.code == "E.STD.FILE.EXISTS"
    assert error.message == f"cannot write {path}: it already exists"
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["once.txt"]


def test_missing_directory_needs_make_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    error = failure(WRITE, {"path": str(path), "content": "x"})
    assert error.code == "E.STD.FILE.NOT_FOUND"
    assert str(tmp_path / "a" / "b") in error.message
    assert "makeDirs" in (error.remediation or "")
    write({"path": str(path), "content": "x", "makeDirs": True})
    assert path.read_text() == "x"


def test_writing_onto_a_directory_fails(tmp_path: Path) -> None:
    error = failure(WRITE, {"path": str(tmp_path), "content": "x"})
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
    error = failure(
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
    monkeypatch.setattr(os.path, "lexists", lambda p: False)
    error = failure(WRITE, {"path": str(path), "content": "second", "mode": "create"})
    assert error.code == "E.STD.FILE.EXISTS"
    assert error.message == f"cannot write {path}: it already exists"
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["once.txt"]


def test_create_works_where_hard_links_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: Any, dst: Any) -> None:
        raise PermissionError(1, "Operation not permitted", src, None, dst)

    monkeypatch.setattr(os, "link", no_links)  # as on FAT (an SD card)
    path = tmp_path / "once.txt"
    write({"path": str(path), "content": "first", "mode": "create"})
    assert path.read_text() == "first"
    monkeypatch.setattr(os.path, "lexists", lambda p: False)
    error = failure(WRITE, {"path": str(path), "content": "second", "mode": "create"})
    assert error.code == "E.STD.FILE.EXISTS"
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["once.txt"]


def test_a_file_in_place_of_a_parent_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("I am a file")
    path = tmp_path / "logs" / "today" / "out.txt"
    for make_dirs in (False, True):
        error = failure(WRITE, {"path": str(path), "content": "x", "makeDirs": make_dirs})
        assert error.code == "E.STD.FILE.NOT_FOUND"
        assert str(path) in error.message
    assert "a part of the path is not a directory" in error.message
    error = failure(READ, {"path": str(tmp_path / "logs" / "x")})
    assert (
        error.message
        == f"cannot read {tmp_path / 'logs' / 'x'}: a part of the path is not a directory"
    )
