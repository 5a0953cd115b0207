"""The examples in docstrings run (``doctest``) and print what they say."""

import doctest

import pytest

from cnnjax import functional, models, nn
from cnnjax.data import pipeline
from cnnjax.models import lenet


@pytest.mark.parametrize("module", [functional, models, nn, pipeline, lenet], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
