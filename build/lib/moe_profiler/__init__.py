"""Importable code behind the top-level scripts (see README.md)."""
