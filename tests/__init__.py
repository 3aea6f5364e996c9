"""Test suite package (lets integration tests import their helpers as tests.integration.*)."""
