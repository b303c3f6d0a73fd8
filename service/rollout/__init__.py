"""Progressive delivery of one adapter version: canary steps judged on the gateway's own per-version metrics."""
