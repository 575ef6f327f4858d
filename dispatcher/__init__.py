"""dispatcher: route each voice-bot turn to the right LLM tier, stream it back, ledger the cost."""

__version__ = "0.1.0"
