"""Where the file nodes may go: the run's work directory and the `[sandbox] file_roots`.

A workflow names a path; the operator decides which directories it may reach. Checking the
path as a string is not enough (a symlink inside a root may point anywhere, and may be
swapped in between a check and an open), so a path is walked the way the kernel would, but
without ever letting the kernel follow a link: from an fd of the root, each directory is
opened relative to its parent's fd with O_NOFOLLOW, and a symlink met on the way is read
(readlinkat) and its target walked the same way. A link that leads out of the roots is
refused; one that stays inside works as usual. The caller opens the last name relative to
the directory fd it gets back, with O_NOFOLLOW, so nothing swapped in meanwhile is followed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Annotated

from msgspec import Meta

from nodehost import Context, NodeError

__all__ = ["SETTING", "RootedPath", "absolute", "open_parent"]

SETTING = "[sandbox] file_roots"
WHERE = f"the run's work directory and {SETTING}"
MAX_LINKS = 40  # symlinks followed while resolving one path (the kernel's own limit)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

RootedPath = Annotated[
    str,
    Meta(
        min_length=1,
        pattern=r"^[^\x00]*$",
        description=(
            "File path: relative to the run's work directory, or absolute inside it or a "
            f"directory of {SETTING}; '..' is not allowed."
        ),
    ),
]


def absolute(ctx: Context, given: str, action: str) -> str:
    """The absolute path `given` means (relative ones start at the run's work directory),
    as shown in messages and results. Refuses '..': a path must say where it stays."""
    if ".." in given.split("/"):
        raise _refused(ctx, action, given, f"'..' is not allowed (a path stays inside {WHERE})")
    if not os.path.isabs(given):
        if ctx.work_dir is None:
            raise _refused(ctx, action, given, "a relative path starts at the run's work "
                           "directory, and this host gives the run none: give an absolute "
                           f"path inside a directory of {SETTING}")
        given = os.path.join(ctx.work_dir, given)
    return _join(_parts(given))


def open_parent(ctx: Context, path: str, action: str, *, make_dirs: bool = False
                ) -> tuple[int, str]:
    """(an fd of the directory holding `path`, the name in it), the directory reached inside
    a root; the name is not a symlink when this returns (it may not exist yet). The caller
    closes the fd. OSError as the walk meets it (FileNotFoundError for a missing directory
    unless `make_dirs` creates it); NodeError E.STD.FILE.OUTSIDE_ROOTS outside the roots."""
    root, todo = _in_roots(ctx, _parts(path), action, path)
    stack = [_open_root(root)]  # fds of the directories from the root down to here
    here = _parts(root)  # and their names, for messages
    todo.reverse()  # the names still to walk, the next one last
    links: list[tuple[str, str]] = []  # the symlinks followed: (link, target)
    try:
        while todo:
            name = todo.pop()
            if name == "..":  # only from a link's target: back to the fd we came through
                if len(stack) == 1:
                    link, leads_to = links[-1]
                    why = f"the symlink {link} leads to {leads_to}, above {_join(here)}"
                    raise _refused(ctx, action, path, f"{why}, outside {WHERE}")
                os.close(stack.pop())
                here.pop()
                continue
            target = _readlink(name, stack[-1])
            if target is None:
                if not todo:
                    return stack.pop(), name
                stack.append(_open_dir(name, stack[-1], make_dirs))
                here.append(name)
                continue
            link = _join([*here, name])
            links.append((link, target))
            if len(links) > MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            parts = _parts(target, keep_up=True)
            if os.path.isabs(target):  # start again, from the root that holds the target
                root, parts = _in_roots(ctx, parts, action, path, link=link)
                while stack:
                    os.close(stack.pop())
                stack.append(_open_root(root))
                here = _parts(root)
            todo.extend(reversed(parts))
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    finally:
        for fd in stack:
            os.close(fd)


def _open_root(root: str) -> int:
    # Following links: a root's own path is the operator's, none of it is inside a root.
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _open_dir(name: str, parent: int, make_dirs: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not make_dirs:
            raise
    try:
        os.mkdir(name, 0o777, dir_fd=parent)  # the umask applies, as with os.makedirs
    except FileExistsError:
        pass  # made meanwhile: opened (or refused, if it is a link) below like any other
    return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _readlink(name: str, parent: int) -> str | None:
    """The target of `name` if it is a symlink; None if it is anything else, or nothing."""
    try:
        return os.readlink(name, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise


def _roots(ctx: Context) -> list[str]:
    roots = [] if ctx.work_dir is None else [str(ctx.work_dir)]
    return roots + list(ctx.sandbox.file_roots)


def _in_roots(ctx: Context, parts: list[str], action: str, path: str, *, link: str = ""
              ) -> tuple[str, list[str]]:
    """(the outermost root holding `parts`, the names below it). A root counts as written
    in the config and with its own symlinks resolved: the operator chose both. The root is
    opened following links, so the outermost one: should a root lie inside another, a link
    a workflow swapped in for the inner one is met by the walk from the outer one, and
    refused if it leads out."""
    best: list[str] | None = None
    for root in _roots(ctx):
        for form in {_join(_parts(root)), os.path.realpath(root)}:
            names = _parts(form)
            if parts[: len(names)] == names and (best is None or len(names) < len(best)):
                best = names
    if best is None:
        if link:
            why = f"the symlink {link} leads to {_join(parts)}, outside {WHERE}"
        else:
            why = f"it is outside {WHERE}"
        raise _refused(ctx, action, path, why)
    return _join(best), parts[len(best):]


def _parts(path: str, *, keep_up: bool = False) -> list[str]:
    """The names of a path, without empty ones and '.' ('..' only where `keep_up`)."""
    return [p for p in path.split("/") if p not in ("", ".") and (keep_up or p != "..")]


def _join(parts: Iterable[str]) -> str:
    return "/" + "/".join(parts)


def _refused(ctx: Context, action: str, path: str, why: str) -> NodeError:
    roots = _roots(ctx)
    allowed = ", ".join(roots) if roots else "none"
    return NodeError(
        "E.STD.FILE.OUTSIDE_ROOTS",
        f"cannot {action} {path}: {why} (allowed: {allowed})",
        remediation=(
            "Use a path inside the run's work directory (relative paths start there), or "
            f"have the operator add the directory to {SETTING}."
        ),
        details={"path": path, "roots": roots},
        retryable=False,
    )
