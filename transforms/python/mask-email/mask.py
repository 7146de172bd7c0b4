"""Masks the local part of e-mail addresses, keeping the domain.

Plain Python with no bindings, so that it is unit-tested natively
(`python3 -m unittest` in this folder); `app.py` plugs it into the world.
"""

import hashlib

SETTINGS = ("column", "mode")
MODES = ("stars", "hash")
HASH_DIGITS = 12


class Settings:
    """Which column to mask and how."""

    def __init__(self, column="email", mode="stars"):
        self.column = column
        self.mode = mode


def parse(config):
    """Reads `column` (default `email`) and `mode` (`stars` or `hash`); raises ValueError otherwise."""
    settings = Settings()
    for key, value in config:
        if key == "column":
            if not value:
                raise ValueError("column is empty; name the e-mail column, for example column=email")
            settings.column = value
        elif key == "mode":
            if value not in MODES:
                raise ValueError(f"mode '{value}' is not stars or hash")
            settings.mode = value
        else:
            raise ValueError(f"unknown setting '{key}'; mask-email takes column and mode")
    return settings


def mask(text, mode):
    """`alice@example.com` becomes `a***@example.com` (stars) or the SHA-256 prefix of the
    whole address before `@example.com` (hash). Text that is not an address is masked whole."""
    if text == "":
        return text
    local, at, domain = text.rpartition("@")
    if mode == "hash":
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_DIGITS]
        return f"{digest}@{domain}" if at and local and domain else digest
    if not (at and local and domain):
        return "***"
    return (local[0] if len(local) > 1 else "") + "***@" + domain
