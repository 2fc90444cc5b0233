"""Hypothesis settings for the property tests: enough examples to find the bugs listed in each
file's docstring, few enough that the whole directory runs in well under a minute."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "properties",
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "150")),
    deadline=None,  # 2 shared cores: timing says nothing here
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("properties")

# Any code point, lone surrogates included (st.text() leaves category Cs out): they reach the
# server as JSON escapes ("\\ud800") and as surrogateescape'd bytes from the environment.
ANY_CHAR = st.characters(codec=None, categories=None, exclude_categories=())
