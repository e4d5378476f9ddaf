"""The generation engine: per-request sampling, a batched decode step over a slot KV cache, and the
scheduler that admits, batches, streams and finishes requests."""
