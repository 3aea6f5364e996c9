"""Integration tests: real PostgreSQL, sockets; no mocks."""
