"""The adaptive parts that own weights or hooks: latency encoder, scheduler head, unit gates."""
