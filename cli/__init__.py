"""The ``falq`` command line: one click group whose subcommands load on first use.

It sits on top of every layer (it starts workers, the gateway, the emulator and Flower),
so it is its own package rather than part of :mod:`falq.producers`.
"""
