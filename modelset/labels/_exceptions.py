"""What the labels layer raises.

```
LabelError                  an image could not be labelled or signed: that image fails,
│                           the set stays open and a rerun labels it again
└── UnlabelledFormat        ... its format carries no XMP we write (JPEG, PNG, WebP do)
UsageError (modelset)
├── SigningKeyError         HIDREAM_C2PA_CERT / HIDREAM_C2PA_KEY do not make a signer
└── NoFontCovers            no installed font draws every character of a visible label
```
"""

from __future__ import annotations

from modelset._exceptions import UsageError


class LabelError(Exception):
    """An image could not be labelled or signed."""


class UnlabelledFormat(LabelError):
    """The image is in a format whose labels this product does not write."""

    def __init__(self, image_format: str | None) -> None:
        super().__init__(
            f"{image_format or 'an unknown'} image: labels are written into JPEG, PNG and WebP only"
        )
        self.image_format = image_format


class SigningKeyError(UsageError):
    """The configured certificate chain and key do not make a C2PA signer."""


class NoFontCovers(UsageError):
    """No font found draws every character of a visible label's text."""

    def __init__(self, text: str, hint: str) -> None:
        super().__init__(f"no installed font draws every character of {text!r}: {hint}")
        self.text = text
