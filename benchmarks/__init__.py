"""GPU serving benchmarks: streaming client, suites, device runner and report generator (issue 9)."""
