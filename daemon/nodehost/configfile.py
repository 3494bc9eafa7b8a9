"""Reading the configuration: config.toml and the token files it names (tier 5).

The Structs are in `config` (pure); this module is what touches the disk for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from .config import TOKEN_PATTERN, AuthConfig, Config, ConfigError, TokenConfig

__all__ = ["load_config", "read_token", "read_tokens", "token_path"]


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read a config file; None (and no NODEHOST_CONFIG) gives the defaults."""
    if path is None:
        path = os.environ.get("NODEHOST_CONFIG") or None
    if path is None:
        return Config()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {os.fspath(path)!r}: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: not valid TOML: {exc}") from None


def token_path(entry: TokenConfig) -> str | None:
    """Where the token of `entry` is read from (`token_file`: relative to
    $CREDENTIALS_DIRECTORY when set); None when it is given in the config."""
    path = entry.token_file
    if path is not None and not os.path.isabs(path) and os.environ.get("CREDENTIALS_DIRECTORY"):
        path = os.path.join(os.environ["CREDENTIALS_DIRECTORY"], path)
    return path


def read_token(entry: TokenConfig) -> str:
    """The token (from `token_file`: relative to $CREDENTIALS_DIRECTORY when set)."""
    if entry.token is not None:
        return entry.token
    path = token_path(entry)
    assert path is not None
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"tenant {entry.tenant}: cannot read token_file {path!r}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if len(token) < 16 or not TOKEN_PATTERN.match(token):
        raise ConfigError(f"tenant {entry.tenant}: the token in {path!r} must be at least 16 "
                          "printable ASCII characters without spaces")
    return token


def read_tokens(auth: AuthConfig) -> dict[str, str]:
    """token -> tenant; a token given twice is an error."""
    out: dict[str, str] = {}
    for entry in auth.tokens:
        token = read_token(entry)
        if token in out:
            raise ConfigError(f"the same token is configured for tenants {out[token]!r} "
                              f"and {entry.tenant!r}")
        out[token] = entry.tenant
    return out
