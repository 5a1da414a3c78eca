"""`imgclass serve`: an HTTP service (FastAPI on uvicorn) and a web page around a Predictor."""

from __future__ import annotations

from imgclass.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
