"""`hj212gw simulate`: many simulated data loggers (DAS) in one asyncio process.

Each simulated DAS speaks HJ 212-2005/2017/2025 over its own TCP connection, using the pure
protocol core for every byte it frames, parses or answers. The device logic (`device.py`) is
sans-IO and takes the time as an argument; `connection.py` is the asyncio shell around it.
"""
