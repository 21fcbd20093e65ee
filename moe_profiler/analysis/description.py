"""What an analysis declares (``Analysis``, ``Need``) and what it is given (``Run``, ``Options``).

Each analysis module exports one ``ANALYSIS``; ``registry.ANALYSES`` lists them in
page order and ``pipeline.run_analyses`` runs them in four steps:

1. ``start(run)``: its accumulator, or None when this report does not ask for it
   (``compare`` without ``--compare``);
2. for every item of the one read of the inputs it is fed: ``accumulator.add(block)``
   for a ``RouteBlock``, ``accumulator.add_window(window)`` for a ``CountsWindow``;
3. ``results(accumulator, run)``: its sections of ``analysis.json`` (``keys``);
4. ``figure(done)`` (optional: a matplotlib figure), ``section(done, figure_uri)`` (its
   HTML below the question, with the figure as a PNG data URI) and ``files(done)``
   (optional: more output files next to ``analysis.json``).

``needs`` says which data an answer is computed from, ``needs_one_of`` data of which
any one will do, and every input says what it ``provides`` (``inputs.py``): a routes
log has all of it, counts logs, dumps and vLLM's own ``routed_experts`` less. An
analysis is fed the inputs that provide what it needs; with none, its section is left
out with one sentence naming what is missing (each ``Need`` is worded to end "it
needs ..."). ``optional`` names what an analysis computes only when every input it
is fed provides a ``Need`` (the router weights, say): its ``run.provides`` says which
it got, and the page says in one sentence what was left out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from moe_profiler.analysis.inputs import Input
    from moe_profiler.reading.columns import RouteBlock


class OptionError(ValueError):
    """A command-line option that cannot be used, with the option's name."""


@dataclass
class Options:
    """What the report does besides reading the logs (analyze_routes.py's options)."""

    tokenizer: str | None = None  # local folder or hub id: token ids -> text
    compare: list[str] = field(default_factory=list)  # logs of run B
    request: str | None = None  # request of the text view (default: longest of the first 16)
    layer: int | None = None  # layer of the per-layer figures (default: first logged)
    top: int = 10  # entries per list (pairs, transitions, tokens)
    min_count: int = 5  # fewest occurrences a pair, transition or token needs to be listed
    num_experts: int | None = None  # the model's experts, for inputs that do not say
    redundant_per_gpu: int = 1  # EPLB's second variant: this many more slots per GPU
    eplb: bool = True  # False: no EPLB placement (no vLLM/torch import: faster, less memory)
    strict: bool = False  # fail on the first bad line instead of skipping it
    warn: Callable[[str], None] | None = None


class Need(enum.Enum):
    """Data an answer is computed from."""

    EXPERT_COUNTS = "how often each expert was chosen at each layer"
    WEIGHT_SUMS = "the router weights each expert received, summed"
    PASSES = "which tokens were routed in the same forward pass"
    TIMES = "when the tokens were routed (time windows)"
    TOKEN_ROUTES = "each token's top-k experts at every logged layer"
    WEIGHTS = "the router weights of each token's experts"
    REQUESTS = "each token's request and position"
    PHASES = "whether each token was a prompt (prefill) or a generated (decode) token"
    TOKEN_IDS = "the input token ids"


@dataclass(frozen=True)
class Run:
    """The run being analysed and the report's options: what every step of an analysis gets.

    ``inputs`` are the inputs this analysis is fed (``pipeline``), ``provides`` what every
    one of them provides.
    """

    inputs: list[Input]
    layers: list[int]  # the logged layers, sorted
    num_experts: int
    top_k: int
    num_layers: int | None  # the model's decoder layers (None: no input says)
    layer: int  # the layer of the per-layer figures and the text view
    title: str  # the model's name, for figure titles
    options: Options
    decode: Callable[[int], str] | None = None  # token id -> text (--tokenizer)
    provides: frozenset[Need] = frozenset(Need)


class Accumulator(Protocol):
    """Fed every item of the read of its inputs, in file order; keeps only what its answer
    needs. Route blocks go to ``add``; an analysis that counts logs and dumps can be fed
    (its needs are met by ``inputs.COUNTS_PROVIDES``) also has ``add_window(window)``."""

    def add(self, block: RouteBlock) -> None: ...


@dataclass(frozen=True)
class Finished:
    """One analysis after the read: its accumulator, its ``analysis.json`` sections, the run."""

    accumulator: Any
    results: dict
    run: Run
    notes: tuple[str, ...] = ()  # one sentence each: what was left out, which inputs fed it


@dataclass(frozen=True)
class Analysis:
    """One question the report answers, and how to answer it (see the module docstring)."""

    key: str  # the section's anchor on the page and its figure's name
    title: str  # the section's heading
    question: str  # the question it answers, as the page asks it
    keys: tuple[str, ...]  # the sections of analysis.json it writes
    needs: frozenset[Need]
    start: Callable[[Run], Accumulator | None]
    results: Callable[[Any, Run], dict]
    section: Callable[[Finished, str | None], str]  # (done, figure as a data URI) -> HTML
    figure: Callable[[Finished], Any] | None = None  # a matplotlib figure, or None: no data
    files: Callable[[Finished], dict[str, str]] | None = None  # file name -> text
    needs_one_of: frozenset[Need] = frozenset()  # besides ``needs``, at least one of these
    optional: dict[Need, str] = field(default_factory=dict)  # need -> what is left out without
