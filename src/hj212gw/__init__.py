"""hj212gw: the receiving platform's front door for HJ 212 data loggers (2005, 2017, 2025)."""

from hj212gw import native as _native

__version__ = "0.1.0"

_native.select()  # compiled per-packet modules, or their sources (hj212gw.native)
