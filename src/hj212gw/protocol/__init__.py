"""The pure HJ 212 protocol core: bytes in, typed packets and events out, bytes for replies.

Nothing in this package touches sockets, clocks, databases, MQTT, logging or metrics.
"""
