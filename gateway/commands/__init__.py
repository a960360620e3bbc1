"""Signed head-end commands (docs/commands.md): envelope and signature, keys, the service that
decides and carries them out, relay control with confirmation, archive changes."""

from .envelope import CommandRejectedError, CommandType, Reason, canonical, sign
from .keys import HeadEndKey, KeyFileError, KeyRing, load_keys
from .service import CommandService, CommandStatistics

__all__ = [
    "CommandRejectedError",
    "CommandService",
    "CommandStatistics",
    "CommandType",
    "HeadEndKey",
    "KeyFileError",
    "KeyRing",
    "Reason",
    "canonical",
    "load_keys",
    "sign",
]
