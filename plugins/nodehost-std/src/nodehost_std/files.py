"""`nodehost.std.file.read` and `nodehost.std.file.write`: files on the host.

Both are sync nodes (run in a worker thread); they poll `ctx.cancelled` between chunks.
Overwrite and create are atomic: the bytes go to a temporary file in the same directory,
which is fsynced and then renamed (or linked) into place, and the directory is fsynced.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import errno
import os
import re
import secrets
import stat
from pathlib import Path as _FsPath
from typing import Annotated, Any, Literal, NoReturn

import msgspec
from msgspec import Meta

from nodehost import Context, NodeError

from . import package
from .structs import MiB, Params, Path, Result

__all__ = ["ReadParams", "ReadResult", "WriteParams", "WriteResult", "read_file", "write_file"]

CHUNK_BYTES = 1 * MiB
Format = Literal["text", "json", "base64"]
Encoding = Annotated[str, Meta(min_length=1, description="Text encoding, e.g. utf-8, latin-1.")]


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None


class ReadParams(Params, kw_only=True):
    """Read a file as text, JSON or base64."""

    path: Path
    format: Annotated[Format, Meta(description="text, json (parsed), or base64 bytes.")] = "text"
    encoding: Encoding = "utf-8"
    max_bytes: Annotated[
        int, Meta(ge=0, le=1024 * MiB, description="Fail if the file is larger.")
    ] = 16 * MiB

    def __post_init__(self) -> None:
        _check_encoding(self.encoding)


class ReadResult(Result, kw_only=True):
    content: Annotated[Any, Meta(description="Text, parsed JSON, or base64 of the bytes.")]
    size_bytes: int
    path: Annotated[str, Meta(description="Absolute path of the file read.")]


class WriteParams(Params, kw_only=True):
    """Write a file: text as-is, any JSON value encoded, or base64 decoded to bytes."""

    path: Path
    content: Annotated[Any, Meta(description="A string, or any JSON value with format json.")]
    format: Annotated[Format, Meta(description="How content becomes bytes.")] = "text"
    encoding: Encoding = "utf-8"
    mode: Annotated[
        Literal["overwrite", "append", "create"],
        Meta(description="create fails if the file exists; overwrite and create are atomic."),
    ] = "overwrite"
    make_dirs: Annotated[bool, Meta(description="Create missing parent directories.")] = False

    def __post_init__(self) -> None:
        _check_encoding(self.encoding)
        if self.format != "json" and not isinstance(self.content, str):
            raise ValueError(
                f"content must be a string when format is {self.format!r} "
                f"(got {type(self.content).__name__}); use format 'json' for other values"
            )


class WriteResult(Result, kw_only=True):
    path: Annotated[str, Meta(description="Absolute path of the file written.")]
    size_bytes: Annotated[int, Meta(description="Size of the file after the write.")]


@package.node("nodehost.std.file.read", idempotent=True)
def read_file(ctx: Context, params: ReadParams) -> ReadResult:
    """Read a file as text, parsed JSON or base64, up to maxBytes."""
    path = os.path.abspath(params.path)
    try:
        data = _read(ctx, path, params.max_bytes)
    except OSError as exc:
        _os_error(exc, "read", path)
    if params.format == "base64":
        content: Any = base64.b64encode(data).decode("ascii")
    else:
        try:
            text = data.decode(params.encoding)
        except UnicodeDecodeError as exc:
            raise NodeError(
                "E.STD.FILE.DECODE",
                f"{path} is not valid {params.encoding} (byte {exc.start}: {exc.reason})",
                remediation="Give the file's encoding, or read it with format base64.",
            ) from None
        content = _parse_json(text, path) if params.format == "json" else text
    return ReadResult(content=content, size_bytes=len(data), path=path)


@package.node("nodehost.std.file.write")
def write_file(ctx: Context, params: WriteParams) -> WriteResult:
    """Write text, JSON or base64-decoded bytes to a file (atomically unless appending)."""
    path = os.path.abspath(params.path)
    data = _encode(params, path)
    directory = os.path.dirname(path)
    try:
        if params.make_dirs:
            try:
                os.makedirs(directory, exist_ok=True)
            except FileExistsError:  # a file stands where a directory should be
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", directory) from None
        elif not os.path.isdir(directory):
            raise NodeError(
                "E.STD.FILE.NOT_FOUND",
                f"cannot write {path}: directory {directory} does not exist",
                remediation="Create the directory first, or set makeDirs to true.",
            )
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        # Write through a symlink to its target rather than replacing the link itself.
        target = os.path.realpath(path) if os.path.islink(path) else path
        if params.mode == "append":
            size = _append(ctx, target, data)
        else:
            size = _replace(ctx, target, data, exclusive=params.mode == "create")
    except OSError as exc:
        _os_error(exc, "write", path)
    ctx.artifact(
        resource_id=_FsPath(path).as_uri(),
        type="file",
        size_bytes=size,
        metadata={"mode": params.mode, "format": params.format},
    )
    return WriteResult(path=path, size_bytes=size)


def _read(ctx: Context, path: str, limit: int) -> bytes:
    with open(path, "rb") as file:
        info = os.fstat(file.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if info.st_size > limit:
            _too_large(path, info.st_size, limit)
        data = bytearray()
        while chunk := file.read(min(CHUNK_BYTES, limit + 1 - len(data))):
            ctx.raise_if_cancelled()
            data += chunk
            if len(data) > limit:  # it grew, or its size is not known (/proc, a pipe)
                _too_large(path, None, limit)
        return bytes(data)


def _too_large(path: str, size: int | None, limit: int) -> NoReturn:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    raise NodeError(
        "E.STD.FILE.TOO_LARGE",
        f"{path} is {what}, over maxBytes ({limit})",
        remediation="Raise maxBytes if the host can afford to hold the file in memory.",
    )


_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")


def _parse_json(text: str, path: str) -> Any:
    data = text.removeprefix("\ufeff").encode()
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        reason = str(exc).removeprefix("JSON is malformed: ")
        match = _BYTE_OFFSET.search(reason)
        if match:
            offset = min(int(match.group(1)), len(data))
            line = data.count(b"\n", 0, offset) + 1
            start = data.rfind(b"\n", 0, offset) + 1
            column = len(data[start:offset].decode(errors="replace")) + 1
            reason = f"{reason[: match.start()].strip()} at line {line}, column {column}"
        raise NodeError(
            "E.STD.FILE.BAD_JSON",
            f"{path} is not valid JSON: {reason}",
            remediation="Fix the file, or read it with format text.",
        ) from None


def _encode(params: WriteParams, path: str) -> bytes:
    content = params.content
    if params.format == "base64":
        try:
            return base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NodeError(
                "E.STD.FILE.BAD_BASE64",
                f"cannot write {path}: content is not valid base64 ({exc})",
            ) from None
    text = (msgspec.json.encode(content).decode() + "\n") if params.format == "json" else content
    try:
        return text.encode(params.encoding)
    except UnicodeEncodeError as exc:
        raise NodeError(
            "E.STD.FILE.ENCODE",
            f"cannot write {path}: character {exc.object[exc.start]!r} at position "
            f"{exc.start} cannot be encoded as {params.encoding}",
            remediation="Choose an encoding that can represent the text, e.g. utf-8.",
        ) from None


def _replace(ctx: Context, target: str, data: bytes, *, exclusive: bool) -> int:
    """Write `data` to a temp file beside `target`, fsync it, then move it into place."""
    directory, name = os.path.split(target)
    if exclusive and os.path.lexists(target):  # fail early; _link_new makes it race-free
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    fd, temp = _temp_file(directory, name)
    try:
        try:
            if not exclusive:
                try:  # keep the permissions of the file being replaced
                    os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
                except FileNotFoundError:
                    pass
            _write_all(ctx, fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        ctx.raise_if_cancelled()  # last chance to stop before the file changes
        if exclusive:
            _link_new(temp, target)
        else:
            os.replace(temp, target)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    _fsync_dir(directory)
    return len(data)


def _temp_file(directory: str, name: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temp = os.path.join(directory, f".{name[:200]}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, flags, 0o666), temp  # the umask applies
        except FileExistsError:
            continue


def _link_new(temp: str, target: str) -> None:
    """Put `temp` at `target` only if nothing is there (FileExistsError otherwise)."""
    try:
        os.link(temp, target)  # atomic and exclusive
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links here (e.g. FAT on an SD card): reserve the name, then replace it.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(temp, target)


def _append(ctx: Context, target: str, data: bytes) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, 0o666)
    try:
        _write_all(ctx, fd, data)
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    _fsync_dir(os.path.dirname(target))
    return size


def _write_all(ctx: Context, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        ctx.raise_if_cancelled()
        written = os.write(fd, view[:CHUNK_BYTES])
        view = view[written:]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError, action: str, path: str) -> NoReturn:
    """Turn an OSError into a NodeError that names the path."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        code, reason = "E.STD.FILE.NOT_FOUND", "no such file or directory"
        if isinstance(exc, NotADirectoryError):
            reason = "a part of the path is not a directory"
        fix = "Check the path (relative paths start at the host's working directory)."
    elif isinstance(exc, IsADirectoryError):
        code, reason, fix = "E.STD.FILE.IS_DIRECTORY", "it is a directory", "Name a file."
    elif isinstance(exc, PermissionError):
        code, reason = "E.STD.FILE.PERMISSION", "permission denied"
        fix = "Give the host's user access to the file, or use another path."
    elif isinstance(exc, FileExistsError):
        code, reason = "E.STD.FILE.EXISTS", "it already exists"
        fix = "Use mode overwrite or append, or remove the file first."
    else:
        code, reason = "E.STD.FILE.IO", str(exc.strerror or exc).lower()
        fix = "Check the disk (space, health) and the path."
    # For two-path calls (rename, link) the second one is the file being written.
    where = exc.filename2 if isinstance(exc.filename2, str) else exc.filename
    if isinstance(where, str) and os.path.abspath(where) != path:
        reason += f" ({where})"
    raise NodeError(code, f"cannot {action} {path}: {reason}", remediation=fix) from None
