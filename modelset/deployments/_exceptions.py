"""The errors of the deployments' own code (the callback receiver).

```
EmitFailed (RuntimeError)   Prefect did not take an event: the receiver does not remember
                            the callback, so HiDream's next delivery of it tries again
```
"""


class EmitFailed(RuntimeError):
    """Prefect did not take the event (no usable events client)."""
