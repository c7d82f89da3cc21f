"""`peftkit serve`: real-time predictions from run folders over HTTP (FastAPI on uvicorn), with dynamic batching
and many adapters sharing one base model. FastAPI and uvicorn are imported only here (the `serve` extra)."""
