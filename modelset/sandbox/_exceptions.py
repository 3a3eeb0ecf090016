"""The errors of the sandbox, answered to its clients as HiDream would, never raised to them.

```
ApiError                    answered as an HTTP 200 envelope with a non-zero code
PhotoError (ValueError)     an uploaded photo breaks an upload rule: answered as ApiError 1001
```
"""


class ApiError(Exception):
    """Answered as an HTTP 200 envelope with a non-zero code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PhotoError(ValueError):
    """The photo breaks an upload rule; the message says which."""
