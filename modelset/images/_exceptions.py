"""The errors of the image layer: one, for a photo that cannot be used.

```
ImageRejected               the file's content cannot become an upload: only that photo fails
```
"""

from __future__ import annotations


class ImageRejected(Exception):
    """A photo cannot be turned into an upload; ``reason`` says why in one line.

    This is a property of the file's content and is permanent: retrying will not help.
    Storage problems (missing file, permission, I/O error) stay ``OSError``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split()) or "rejected"
        super().__init__(self.reason)

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str]]:
        # Keeps the exception picklable across process/task boundaries.
        return (type(self), (self.reason,))
