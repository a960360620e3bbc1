"""Wire protocols spoken by a concentrator: DL/T 645-2007/1997, Q/GDW 1376.2, DL/T 698.45.

Everything in this package is pure and synchronous (sans-IO): bytes in, typed frames out, and
back. Nothing here imports asyncio, a database or MQTT; drivers and the gateway own all I/O.
"""
