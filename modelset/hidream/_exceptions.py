"""The errors the HiDream client raises, one tree so callers catch broadly and recover narrowly.

```
HiDreamError
├── AccountError            the service refused the account: stop the batch
│   ├── TokenRejected       the token is invalid or expired (never retried)
│   └── NoCredits           code 2007: no credits left (never retried)
├── Throttled               HTTP 429 or a throttling code; ``retry_after`` in seconds
├── RequestRejected         the service refused this request's input (never retried)
├── TaskNotFound            a result lookup found no task for the id given
├── ServiceError            the service failed: HTTP 5xx, code 2004/2031, a malformed answer
├── ConnectFailed           no connection was made: the request certainly never left
├── OutcomeUnknown          a submit may have reached the service; it is not resent blindly
└── DeadlineExceeded        a task was not finished when the wait's deadline passed
```

No exception carries the token: messages are built from codes, statuses and the
service's own message, never from request headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelset.hidream.models import TaskResult


class HiDreamError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class AccountError(HiDreamError):
    """The service refused the account; nothing more can be done until a person acts."""


class TokenRejected(AccountError):
    """The API token was rejected (invalid or expired)."""


class NoCredits(AccountError):
    """The account has no credits left (code 2007)."""


class Throttled(HiDreamError):
    """The service asked us to slow down."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: int | None = None,
        status: int | None = None,
    ):
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class RequestRejected(HiDreamError):
    """The service refused this request's input; resending it would fail again."""


class TaskNotFound(HiDreamError):
    """No task is known for the task_id or request_id looked up."""


class ServiceError(HiDreamError):
    """The service failed to answer properly."""


class ConnectFailed(HiDreamError):
    """No connection could be made: the request never left this machine."""


class OutcomeUnknown(HiDreamError):
    """A submit may have reached the service, and whether it created a task is unknown."""

    def __init__(self, message: str, *, request_id: str | None, cause: str = ""):
        super().__init__(message)
        self.request_id = request_id
        self.cause = cause or message
        """What lost the answer, in a few words (``the service failed with HTTP 502``)."""


class DeadlineExceeded(HiDreamError):
    """The task was still running when the wait's deadline passed."""

    def __init__(self, message: str, *, last_result: TaskResult | None):
        super().__init__(message)
        self.last_result = last_result
