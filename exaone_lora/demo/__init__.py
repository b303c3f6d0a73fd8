"""The local end-to-end demo: the whole product on this machine, with no Azure account and no GPU."""
