"""Test and benchmark helpers (not needed by the library itself)."""
