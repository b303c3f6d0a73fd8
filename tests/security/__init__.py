"""Security tests of the gateway (issue 20): every control in docs/security.md names the test that proves it."""
