"""Labels in every image this product stores: the IPTC digital source type and the TC260
``AIGC`` record in its XMP, a C2PA manifest where a key is configured, and a visible
label on published copies where a run asks for one (``docs/labels.md``).

c2pa-python is imported only where something is signed or read (``signing``, ``read``).
"""

from modelset.labels._exceptions import LabelError, NoFontCovers, SigningKeyError, UnlabelledFormat
from modelset.labels.aigc import AigcRecord
from modelset.labels.config import labelling_from_settings
from modelset.labels.labelling import Generated, Labelling, Reviewed
from modelset.labels.visible import VisibleLabel, find_font
from modelset.labels.xmp import TRAINED_ALGORITHMIC_MEDIA, XmpLabels, read_labels, write_labels

__all__ = [
    "TRAINED_ALGORITHMIC_MEDIA",
    "AigcRecord",
    "Generated",
    "LabelError",
    "Labelling",
    "NoFontCovers",
    "Reviewed",
    "SigningKeyError",
    "UnlabelledFormat",
    "VisibleLabel",
    "XmpLabels",
    "find_font",
    "labelling_from_settings",
    "read_labels",
    "write_labels",
]
