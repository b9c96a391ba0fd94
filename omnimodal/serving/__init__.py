"""HTTP serving: an OpenAI-compatible API over a Pipeline (``app.create_app``, ``app.serve``; FastAPI + uvicorn)."""
