"""Fabric provisioning: plain functions that take a `fabric.Connection` and return what they changed.

`fabfile.py` at the repository root is a thin layer of Fabric tasks over these modules.
"""
