"""Defaults shared by the load benchmark's command line and its runner (no heavy imports)."""

DEFAULT_TEXT = "what time do you close on sundays"
ENDPOINTS = ("chat", "turns")
