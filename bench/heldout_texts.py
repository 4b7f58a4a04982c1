"""Held-out texts for the benchmarks: WikiText-2 test and texts of other domains that every machine
of this project has without the network (documentation shipped in Debian packages). None of them is
ever a calibration, fitness or validation source: the product's calibration is the dense model's own
samples or, with ``--calib-text``, the user's file; the benchmarks calibrate on those or on Python's
own reference documentation (``pydoc_data``), a domain none of these texts is from.

    from bench.heldout_texts import TEXTS, read
    text = read("licenses", data_dir)        # str
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path


def _wikitext2(data_dir: Path) -> str:
    return (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")


def _licenses(_data_dir: Path) -> str:
    """Debian's common licenses (legal English), each distinct text once, in name order."""
    seen, parts = set(), []
    for p in sorted(Path("/usr/share/common-licenses").iterdir()):
        data = p.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            parts.append(data.decode("utf-8", errors="replace"))
    return "\n\n".join(parts)


def _coreutils_manual(_data_dir: Path) -> str:
    """GNU coreutils' Texinfo manual (technical prose about shell tools), as Debian ships it."""
    return gzip.decompress(Path("/usr/share/info/coreutils.info.gz").read_bytes()).decode("utf-8", errors="replace")


TEXTS = {"wikitext2": _wikitext2, "licenses": _licenses, "coreutils-manual": _coreutils_manual}


def read(name: str, data_dir: str | Path) -> str:
    return TEXTS[name](Path(data_dir))
