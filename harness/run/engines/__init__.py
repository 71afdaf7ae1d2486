"""Training engines, registered in ``ENGINES``: ``torch`` (``torch_engine``), ``deepspeed`` (``deepspeed_engine``) and
``auto`` (``auto``: deepspeed where CUDA is available, torch otherwise). Each is a ``harness.api.Engine``."""
