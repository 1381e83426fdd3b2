"""prlm: personalized retrieval-augmented generation with explicit reasoning.

Stages, one module each: data -> retrieval -> prompts -> generation ->
evaluation (reward and training build on them). Nothing here loads a model
at import time.
"""

__version__ = "0.1.0"


class PrlmError(Exception):
    """An error the user can fix; the CLI prints it as one line, no traceback."""
