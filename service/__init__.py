"""The HTTP service: a SimCLR model bundle and a FAISS index behind FastAPI (see service.app)."""
