"""The HiDream model image set API: client, answer models and errors (no Prefect here)."""

from modelset.hidream._exceptions import (
    AccountError,
    ConnectFailed,
    DeadlineExceeded,
    HiDreamError,
    NoCredits,
    OutcomeUnknown,
    RequestRejected,
    ServiceError,
    TaskNotFound,
    Throttled,
    TokenRejected,
)
from modelset.hidream.client import HiDreamClient, encode_image, parse_retry_after
from modelset.hidream.models import (
    Gender,
    Receipt,
    SubTaskResult,
    TaskResult,
    TaskStatus,
    Template,
    parse_callback_body,
)

__all__ = [
    "AccountError",
    "ConnectFailed",
    "DeadlineExceeded",
    "Gender",
    "HiDreamClient",
    "HiDreamError",
    "NoCredits",
    "OutcomeUnknown",
    "Receipt",
    "RequestRejected",
    "ServiceError",
    "SubTaskResult",
    "TaskNotFound",
    "TaskResult",
    "TaskStatus",
    "Template",
    "Throttled",
    "TokenRejected",
    "encode_image",
    "parse_callback_body",
    "parse_retry_after",
]
