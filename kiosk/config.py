"""The kiosk's preferences and device pairing, persisted as JSON in its data directory.

This is the kiosk's own local store (beside the outbox), never the server's storage. The file
holds the device secret, so it is written owner-readable only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["DEMO_EMAIL", "DEMO_PASSWORD", "DEMO_SERVER_URL", "KioskConfig", "default_data_dir"]

DEMO_SERVER_URL = "http://127.0.0.1:8000"
DEMO_EMAIL = "barista@demo.regulars.test"
DEMO_PASSWORD = "demo-password"
CONFIG_FILE = "kiosk.json"


def default_data_dir() -> Path:
    """Where the kiosk keeps its config and outbox: ``$REGULARS_KIOSK_DATA_DIR`` or XDG data."""
    explicit = os.environ.get("REGULARS_KIOSK_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "regulars-kiosk"


@dataclass(frozen=True, slots=True)
class KioskConfig:
    """What a café sets once per tablet. Unknown keys in the file are ignored."""

    data_dir: Path = field(default_factory=default_data_dir)
    server_url: str = DEMO_SERVER_URL
    # "auto" = first camera if a provider exists, "none" = no preview, "feed" = test frames,
    # or a camera index as text ("0", "1", ...).
    camera: str = "auto"
    device_id: str | None = None
    device_secret: str | None = None
    location_id: str | None = None
    location_name: str | None = None
    last_email: str | None = None
    currency: str = ""

    @property
    def paired(self) -> bool:
        """True once this tablet has a device id and secret for PIN sign-in."""
        return bool(self.device_id and self.device_secret)

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.sqlite3"

    @classmethod
    def load(cls, data_dir: Path, **overrides: Any) -> KioskConfig:
        """Read ``kiosk.json`` from ``data_dir`` (missing or corrupt file = defaults)."""
        known = {f.name for f in fields(cls)} - {"data_dir"}
        stored: dict[str, Any] = {}
        try:
            raw = json.loads((data_dir / CONFIG_FILE).read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                stored = {k: v for k, v in raw.items() if k in known}
        except (OSError, ValueError):
            stored = {}
        stored.update({k: v for k, v in overrides.items() if v is not None})
        return cls(data_dir=data_dir, **stored)

    def save(self) -> None:
        """Write atomically (temp file + rename) so a power cut never leaves half a file."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        body = {k: v for k, v in asdict(self).items() if k != "data_dir"}
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".kiosk-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(body, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.data_dir / CONFIG_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def with_changes(self, **changes: Any) -> KioskConfig:
        """A copy with ``changes`` applied (the config is immutable)."""
        return replace(self, **changes)
