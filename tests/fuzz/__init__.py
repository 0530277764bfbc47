"""Fuzzing helpers shared by the hypothesis tests and the atheris harnesses.

``model`` generates vhost-user messages from any source of choices (a
hypothesis ``data`` object or an atheris ``FuzzedDataProvider``) and runs them
through a ``Session`` while checking its invariants (docs/security.md: every fd
stored or closed, nothing started on stale state).
"""
