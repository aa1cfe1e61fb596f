"""Reading what the client needs from a Scrutiny Firmware Description (``.sfd``) file.

An SFD is a zip archive of small files: ``firmwareid`` (32 hex characters), ``metadata.json``,
``varmap.json`` and optionally ``alias.json`` (scrutinydebugger 0.16.0 ``FirmwareDescription``).
Installing one over the API (``upload_sfd_init``, scrutiny.md 1.4) needs its firmware id first.
"""

from __future__ import annotations

import io
import re
import zipfile

from katclient.errors import InvalidUsage

__all__ = ["FIRMWARE_ID_RE", "MAX_SFD_SIZE", "read_sfd_firmware_id"]

#: A firmware id: 128 bits as 32 hex characters (scrutiny.md 1.6 "Identifiers").
FIRMWARE_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")

#: Largest SFD the server accepts for upload, in bytes (``SFD_MAX_UPLOAD_SIZE``, scrutiny.md 1.4).
MAX_SFD_SIZE = 64 * 1024 * 1024

_FIRMWARE_ID_FILE = "firmwareid"


def read_sfd_firmware_id(data: bytes) -> str:
    """The firmware id stored in an SFD file's content.

    :param data: the whole ``.sfd`` file.
    :returns: the id, 32 lowercase hex characters.
    :raises InvalidUsage: when ``data`` is not an SFD (not a zip, no valid ``firmwareid``).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            with archive.open(_FIRMWARE_ID_FILE) as f:
                text = f.read(64).decode("ascii").strip()
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, OSError) as exc:
        raise InvalidUsage(f"not a Scrutiny Firmware Description: {exc}") from exc
    if not FIRMWARE_ID_RE.match(text):
        raise InvalidUsage(f"SFD has an invalid firmware id {text!r}")
    return text.lower()
