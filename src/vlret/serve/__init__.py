"""The HTTP service: a FastAPI app over an index, with a web page."""

from vlret.serve.app import create_app

__all__ = ["create_app"]
