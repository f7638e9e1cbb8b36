"""HTTP serving: `bloodmnist serve` (FastAPI app, request batching, limits, the web page)."""
