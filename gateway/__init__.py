"""The amigw daemon: configuration, collection, checks, uplink, commands, operations, CLI."""

__version__ = "0.1.0"
