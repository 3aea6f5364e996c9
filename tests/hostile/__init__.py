"""Hostile input and faults: every finding of the attacker review (issue #9), against real PostgreSQL and sockets."""
