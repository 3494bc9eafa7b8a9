"""A plugin whose import fails, as one with a missing dependency does."""

from __future__ import annotations

import nodehost_no_such_dependency  # noqa: F401
