"""The science gateway's service modules; ``gateway.py`` beside this package is the HTTP layer and the WSGI entry.

One module per concern (see docs/contributing.md). The Dask workers import
``science_gateway.random_chunks`` from the same image.
"""
