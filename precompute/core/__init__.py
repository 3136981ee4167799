"""Shared primitives below every paper step: domain errors, the settings class, packaged data
folders, secret redaction, JSON-text checks, token bytes and the CLI options made from settings."""
