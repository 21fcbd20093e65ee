"""Which inputs each analysis is fed, and one sentence for whatever the inputs cannot answer.

An analysis is fed every input that provides all its ``needs`` and one of its
``needs_one_of``; it is left out when no input does. What it computes only when every
input it is fed provides a ``Need`` (``optional``) is left out otherwise. Each time, the
page and ``analysis.json`` say so in one sentence naming the inputs and what they lack.
"""

from __future__ import annotations

from moe_profiler.analysis.description import Analysis, Need
from moe_profiler.analysis.inputs import Input


def missing(analysis: Analysis, one: Input) -> list[str]:
    """What ``one`` lacks of what ``analysis`` needs, in words (empty: it can be fed)."""
    lacks = [need.value for need in _ordered(analysis.needs) if need not in one.provides]
    if analysis.needs_one_of and not analysis.needs_one_of & one.provides:
        lacks.append(" or ".join(need.value for need in _ordered(analysis.needs_one_of)))
    return lacks


def fed_inputs(analysis: Analysis, inputs: list[Input]) -> list[Input]:
    """The inputs that provide what ``analysis`` needs."""
    return [one for one in inputs if not missing(analysis, one)]


def common(inputs: list[Input]) -> frozenset[Need]:
    """What every one of ``inputs`` provides."""
    return frozenset.intersection(*(one.provides for one in inputs))


def left_out(analysis: Analysis, inputs: list[Input]) -> str:
    """Why ``analysis`` has no section: what it needs that no input records."""
    lacking = [(one, missing(analysis, one)) for one in inputs]
    if all(lacks == lacking[0][1] for _, lacks in lacking):
        return (
            f"Left out: it needs {_join(lacking[0][1])}, which "
            f"{_names(inputs)} {_verb(inputs)} not record."
        )
    per_input = "; ".join(f"{_names([one])} has no {_join(lacks)}" for one, lacks in lacking)
    return f"Left out: no input records all it needs ({per_input})."


def notes(analysis: Analysis, fed: list[Input], inputs: list[Input]) -> tuple[str, ...]:
    """What the section leaves out: the inputs it was not fed, the optional parts."""
    said = []
    unfed = [one for one in inputs if all(one is not f for f in fed)]
    if unfed:
        reasons = "; ".join(
            f"{_names([one])} does not record {_join(missing(analysis, one))}" for one in unfed
        )
        said.append(f"From {_names(fed)} only: {reasons}.")
    for need, what in analysis.optional.items():
        lacking = [one for one in fed if need not in one.provides]
        if lacking:
            said.append(
                f"Left out: {what} (it needs {need.value}, which {_names(lacking)} "
                f"{_verb(lacking)} not record)."
            )
    return tuple(said)


def describe(one: Input) -> dict:
    """An input as ``analysis.json`` lists it."""
    return {
        "kind": one.kind,
        "files": [str(f) for f in one.files],
        "provides": [need.name.lower() for need in _ordered(one.provides)],
        "model": one.model,
        "layers": one.layers,
    }


def _ordered(needs: frozenset[Need]) -> list[Need]:
    return [need for need in Need if need in needs]


def _names(inputs: list[Input]) -> str:
    return _join([f"{one.name} ({one.kind})" for one in inputs])


def _verb(inputs: list[Input]) -> str:
    return "does" if len(inputs) == 1 else "do"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
