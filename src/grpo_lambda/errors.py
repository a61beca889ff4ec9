"""The project's one exception type.

Library code raises `GRPOLambdaError` with a one-line message that names the thing at fault and the fix; only entry
points (`__main__` blocks) print it, prefixed with `grpo_lambda:`, and exit non-zero. It is a `ValueError`, so
callers that already catch bad values catch it too.
"""


class GRPOLambdaError(ValueError):
    """A user-facing error: its message is one line saying what is wrong and how to fix it."""


def exit_status(main, *args) -> int | str | None:
    """What an entry point's `__main__` block passes to `sys.exit`: `main(*args)`'s return code, or for a
    GRPOLambdaError its one line (`grpo_lambda: …`, printed to stderr with exit status 1)."""
    try:
        return main(*args)
    except GRPOLambdaError as error:
        return f"grpo_lambda: {error}"
