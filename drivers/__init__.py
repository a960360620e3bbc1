"""Byte transports and per-bus channels: serial, TCP serial servers, ptys, the PLC module."""
