"""Two checks on client text that Python's ``str`` methods get subtly wrong.

* :func:`is_ascii_number`: ``str.isdigit()`` is true for ``"²"`` and ``"١٢"`` too, and ``int("²")``
  raises; a number on the wire (a port, a sequence, a length) is ASCII digits only.
* :func:`utf8`: the bytes to hash or measure for any ``str``, never ``UnicodeEncodeError``.
  ``surrogateescape`` gives back the original bytes of text decoded with it (argv, environment
  values that were not UTF-8); any other lone surrogate is encoded as itself (``surrogatepass``),
  so it is still counted and hashed consistently, and nothing it reaches can crash.
"""

from __future__ import annotations


def is_ascii_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")
