"""The science gateway's service modules; ``gateway.py`` beside this package is the HTTP layer and the WSGI entry.

One module per concern (see docs/contributing.md). The Dask workers import
``science_gateway.region_writes`` and the apps (``science_gateway.apps``, and those
installed under the entry-point group ``science_gateway.apps``) from the same image.
"""
