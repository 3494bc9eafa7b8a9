"""`nodehost.std.file.read` and `nodehost.std.file.write`: files the operator allowed.

A path is relative to the run's work directory, or absolute inside it or a directory of
`[sandbox] file_roots` (roots.py resolves it without following a link out of them); every
file operation is then relative to the fd of the file's directory, so what was checked is
what is used. Both are sync nodes (run in a worker thread); they poll `ctx.cancelled`
between chunks. Overwrite and create are atomic: the bytes go to a temporary file in the
same directory, which is fsynced and then renamed (or linked) into place, and the directory
is fsynced.
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
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import msgspec
from msgspec import Meta

from nodehost import Context, NodeError

from . import package, roots
from .roots import RootedPath
from .structs import MiB, Params, Result

__all__ = ["ReadParams", "ReadResult", "WriteParams", "WriteResult", "read_file", "write_file"]

CHUNK_BYTES = 1 * MiB
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC  # the last name is never a link (roots.py)
Format = Literal["text", "json", "base64"]
Encoding = Annotated[str, Meta(min_length=1, description="Text encoding, e.g. utf-8, latin-1.")]


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None


class ReadParams(Params, kw_only=True):
    """Read a file as text, JSON or base64."""

    path: RootedPath
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

    path: RootedPath
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
    path = roots.absolute(ctx, params.path, "read")
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
    path = roots.absolute(ctx, params.path, "write")
    data = _encode(params, path)
    try:
        try:
            # A symlink on the way (the last name too) is followed to its target, inside
            # the roots: the file is written there rather than the link replaced.
            directory, name = roots.open_parent(ctx, path, "write", make_dirs=params.make_dirs)
        except FileNotFoundError:
            if params.make_dirs:
                raise
            raise NodeError(
                "E.STD.FILE.NOT_FOUND",
                f"cannot write {path}: directory {os.path.dirname(path)} does not exist",
                remediation="Create the directory first, or set makeDirs to true.",
            ) from None
        try:
            if _is_dir(directory, name):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if params.mode == "append":
                size = _append(ctx, directory, name, data)
            else:
                size = _replace(ctx, directory, name, data, exclusive=params.mode == "create")
        finally:
            os.close(directory)
    except OSError as exc:
        _os_error(exc, "write", path)
    ctx.artifact(
        resource_id=Path(path).as_uri(),
        type="file",
        size_bytes=size,
        metadata={"mode": params.mode, "format": params.format},
    )
    return WriteResult(path=path, size_bytes=size)


def _read(ctx: Context, path: str, limit: int) -> bytes:
    directory, name = roots.open_parent(ctx, path, "read")

    def opener(name: str, flags: int) -> int:
        return os.open(name, flags | _NOFOLLOW, dir_fd=directory)

    try:
        file = open(name, "rb", opener=opener)  # a directory: IsADirectoryError, fd closed
    finally:
        os.close(directory)
    with file:
        info = os.fstat(file.fileno())
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


def _is_dir(directory: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _lexists(directory: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _replace(ctx: Context, directory: int, name: str, data: bytes, *, exclusive: bool) -> int:
    """Write `data` to a temp file beside `name`, fsync it, then move it into place.

    rename and link act on the name itself, never on what a link there points to: a link
    swapped in after the walk is replaced (or makes create fail), never written through."""
    if exclusive and _lexists(directory, name):  # fail early; _link_new makes it race-free
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
    fd, temp = _temp_file(directory, name)
    at = {"src_dir_fd": directory, "dst_dir_fd": directory}
    try:
        try:
            if not exclusive:
                try:  # keep the permissions of the file being replaced
                    mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
                    os.fchmod(fd, stat.S_IMODE(mode))
                except FileNotFoundError:
                    pass
            _write_all(ctx, fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        ctx.raise_if_cancelled()  # last chance to stop before the file changes
        if exclusive:
            _link_new(directory, temp, name)
        else:
            os.replace(temp, name, **at)
    finally:
        try:
            os.unlink(temp, dir_fd=directory)
        except FileNotFoundError:
            pass
    os.fsync(directory)
    return len(data)


def _temp_file(directory: int, name: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    while True:
        temp = f".{name[:200]}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(temp, flags, 0o666, dir_fd=directory), temp  # the umask applies
        except FileExistsError:
            continue


def _link_new(directory: int, temp: str, name: str) -> None:
    """Put `temp` at `name` only if nothing is there (FileExistsError otherwise)."""
    try:
        os.link(temp, name, src_dir_fd=directory, dst_dir_fd=directory)  # atomic, exclusive
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links here (e.g. FAT on an SD card): reserve the name, then replace it.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        os.close(os.open(name, flags, 0o666, dir_fd=directory))
        os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)


def _append(ctx: Context, directory: int, name: str, data: bytes) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW
    fd = os.open(name, flags, 0o666, dir_fd=directory)
    try:
        _write_all(ctx, fd, data)
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    os.fsync(directory)
    return size


def _write_all(ctx: Context, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        ctx.raise_if_cancelled()
        written = os.write(fd, view[:CHUNK_BYTES])
        view = view[written:]


def _os_error(exc: OSError, action: str, path: str) -> NoReturn:
    """Turn an OSError into a NodeError that names the path."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        code, reason = "E.STD.FILE.NOT_FOUND", "no such file or directory"
        if isinstance(exc, NotADirectoryError):
            reason = "a part of the path is not a directory"
        fix = "Check the path (relative paths start at the run's work directory)."
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
    # (exc.filename is a name relative to a directory fd, if any: the path says more)
    raise NodeError(code, f"cannot {action} {path}: {reason}", remediation=fix) from None
