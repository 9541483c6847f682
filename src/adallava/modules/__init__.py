"""The adaptive parts that own weights: latency encoder, scheduler head, sliced layers, gates."""
