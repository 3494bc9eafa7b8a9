"""Who is calling: bearer tokens mapped to tenants (tier 5, stdlib only).

Rules (DESIGN.md, "HTTP API"; the research notes, C5):
- On TCP every request except the public ones (`/healthz`, `/openapi.json`) needs a token;
  the daemon refuses to start on TCP without tokens configured.
- On the Unix socket the file permissions are the authentication: a client without a token
  acts as the `default` tenant, unless tokens are configured and `require_token_on_socket`
  is set. A client that does send a token is always held to it (a wrong one is a 401).
- Tokens are compared in constant time: the presented token is hashed and compared with
  every configured hash with `hmac.compare_digest`, without stopping at the first match.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_TENANT", "AuthFailed", "Authenticator", "Principal"]

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: the tenant whose runs and events it may see."""

    tenant: str


class AuthFailed(Exception):
    """No usable credentials: answer 401 with this message."""


class Authenticator:
    """Turns an `Authorization` header into a Principal."""

    def __init__(self, tokens: Mapping[str, str] | None = None, *,
                 require_token: bool = False) -> None:
        """`tokens` maps token -> tenant; `require_token`: no anonymous `default` caller."""
        self._hashes = [(_digest(token), tenant) for token, tenant in (tokens or {}).items()]
        if require_token and not self._hashes:
            raise ValueError("tokens are required, but none are configured")
        self.require_token = require_token

    def replace(self, tokens: Mapping[str, str]) -> None:
        """New tokens (a config reload); whether a token is required does not change."""
        if self.require_token and not tokens:
            raise ValueError("tokens are required, but the new configuration has none")
        self._hashes = [(_digest(token), tenant) for token, tenant in tokens.items()]

    @property
    def has_tokens(self) -> bool:
        return bool(self._hashes)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal; AuthFailed when a token is needed or wrong."""
        if not authorization:
            if self.require_token:
                raise AuthFailed("a bearer token is required (Authorization: Bearer <token>)")
            return Principal(DEFAULT_TENANT)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthFailed("the Authorization header must be 'Bearer <token>'")
        tenant = self._lookup(token)
        if tenant is None:
            raise AuthFailed("the bearer token is not valid")
        return Principal(tenant)

    def _lookup(self, token: str) -> str | None:
        digest = _digest(token)
        found: str | None = None
        for known, tenant in self._hashes:  # no early exit: time does not depend on the match
            if hmac.compare_digest(digest, known):
                found = tenant
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
