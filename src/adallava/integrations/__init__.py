"""Integrations with third-party tools that load adallava from the outside (lmms-eval).

An integration is the top of the stack beside the CLI: it may use every application (evaluation's
readers and scoring, the world) and nothing imports it but the CLI. Each one imports its tool only
inside its own modules, so adallava works without the tool installed.
"""
