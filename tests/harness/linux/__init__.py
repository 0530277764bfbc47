"""Helpers for tests that need Linux networking (network namespaces, links)."""
