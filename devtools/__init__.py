"""Tools to run the service and its dependencies on one machine: never imported by the service."""
