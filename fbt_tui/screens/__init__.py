"""The five screens: catalog, pair preview, configure, run, runs."""
