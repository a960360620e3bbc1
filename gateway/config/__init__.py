"""The gateway's configuration: one TOML file, validated with every error reported by key path."""

from .loader import ConfigError, load_config, parse_config
from .model import (
    BusConfig,
    CollectionConfig,
    Config,
    Edition,
    GatewayConfig,
    MeterConfig,
    MeterRole,
    PlcConfig,
    SerialBusConfig,
    SpoolConfig,
    TcpBusConfig,
    TimeSyncConfig,
)

__all__ = [
    "BusConfig",
    "CollectionConfig",
    "Config",
    "ConfigError",
    "Edition",
    "GatewayConfig",
    "MeterConfig",
    "MeterRole",
    "PlcConfig",
    "SerialBusConfig",
    "SpoolConfig",
    "TcpBusConfig",
    "TimeSyncConfig",
    "load_config",
    "parse_config",
]
