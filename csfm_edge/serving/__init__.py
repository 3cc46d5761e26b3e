"""Serving at scale: Triton Inference Server model repositories and a PyTriton server."""

# Triton's dynamic batching, one default for the repository writer, both servers and the CLI.
MAX_BATCH = 64
MAX_QUEUE_DELAY_US = 1000  # the longest a request waits for company in a batch
