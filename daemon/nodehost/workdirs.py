"""Each run's work directory: where its nodes write by default (tier 3: file I/O).

`<root>/<tenant>/<run id>/`, mode 0700, made when the run's first attempt starts and removed
when retention forgets the run. A host without a state directory (a one-shot `nodehost run`,
tests) keeps them in a temporary root removed when the host closes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["WorkDirs"]

log = logging.getLogger(__name__)


class WorkDirs:
    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._temporary = root is None
        self._made: set[tuple[str, str]] = set()
        self._tenants: set[str] = set()
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        root = self._root
        if root is None:
            with self._lock:  # sync nodes ask for their work directory from threads
                if self._root is None:
                    self._root = Path(tempfile.mkdtemp(prefix="nodehost-work-"))
                root = self._root
        return root

    def tenant_dir(self, tenant: str) -> Path:
        return self.root / tenant

    def path(self, tenant: str, run_id: str) -> Path:
        return self.root / tenant / run_id

    def make(self, tenant: str, run_id: str) -> Path:
        """The run's work directory, made if it does not exist yet."""
        path = self.path(tenant, run_id)
        if (tenant, run_id) not in self._made:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if tenant not in self._tenants:  # made by mkdir's parents= with the umask's mode
                os.chmod(path.parent, 0o700)
                self._tenants.add(tenant)
            self._made.add((tenant, run_id))
        return path

    def remove(self, tenant: str, run_id: str) -> None:
        self._made.discard((tenant, run_id))
        if self._root is None:
            return
        shutil.rmtree(self.path(tenant, run_id), ignore_errors=True)

    def close(self) -> None:
        """Remove a temporary root (a daemon's persistent one stays)."""
        if self._temporary and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._made.clear()
