"""An example plug-in of fusion-harness: one fusion method registered through an entry point (``docs/plugins.md``)."""
