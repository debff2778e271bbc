"""Generated credentials of the local stack.

Passwords are random, created on first start, stored under ``.local/secrets`` with mode
0600 and handed to clients through a libpq password file, so DSNs carry no password and
nothing secret is printed or logged.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


class StackSecrets:
    """Password store: one generated password per (cluster, role), persisted across restarts."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._file = directory / "passwords.json"

    def password(self, cluster: str, role: str) -> str:
        """Return the password of ``role`` on ``cluster``, generating it on first use."""
        data = self._load()
        key = f"{cluster}/{role}"
        if key not in data:
            data[key] = secrets.token_urlsafe(24)
            self._save(data)
        return data[key]

    def write_pgpass(self, entries: list[tuple[int, str, str]]) -> Path:
        """Write a libpq password file for ``(port, role, cluster)`` entries on loopback."""
        lines = [
            f"127.0.0.1:{port}:*:{role}:{self.password(cluster, role)}"
            for port, role, cluster in entries
        ]
        path = self._dir / "pgpass"
        self._write_private(path, "\n".join(lines) + "\n")
        return path

    def _load(self) -> dict[str, str]:
        try:
            loaded = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in loaded.items()}

    def _save(self, data: dict[str, str]) -> None:
        self._write_private(self._file, json.dumps(data, indent=2, sort_keys=True))

    def _write_private(self, path: Path, text: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
