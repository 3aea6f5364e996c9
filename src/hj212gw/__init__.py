"""hj212gw: the receiving platform's front door for HJ 212 data loggers (2005, 2017, 2025)."""

__version__ = "0.1.0"
