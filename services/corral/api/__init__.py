"""Ollama's API as every Corral service speaks it: requests, responses, errors and their formats."""

# The Ollama release whose API Corral implements: what GET /api/version answers on every service.
OLLAMA_VERSION = "0.33.0"
