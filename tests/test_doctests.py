"""The examples in docstrings run (``doctest``) and print what they say."""

import doctest

import pytest

from cnnjax import functional, models


@pytest.mark.parametrize("module", [functional, models], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
