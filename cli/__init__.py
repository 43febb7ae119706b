"""The ``mamlctl`` command line: one module per stage, each exposing ``register(app)``."""
