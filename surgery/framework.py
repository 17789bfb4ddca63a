"""The pass framework: a pass has a name, a one-line description and one job, and returns a report.

A plain ``Pass`` implements ``apply(graph, ctx, report)`` (sanitize, layout, precision, ...). A
``FusionPass`` is a rewrite rule in the shape of onnxscript's ``RewriteRule``: the base owns the loop over
the candidates (one anchor node each), and the pass provides

- ``match``: the candidate's structure, as a ``Match`` (the tensors it reads and the ones it replaces),
  or ``NoMatch(reason)`` raised;
- ``verify``: the candidate's original nodes run on ONNX Runtime against the plugin's numpy reference on
  random inputs (the largest relative difference);
- ``rewrite``: the new nodes.

Between match and verify the base checks that every node the rewrite replaces is used only inside the
pattern (onnxscript's ``check_nodes_are_removable``): otherwise the original compute would keep running
beside the fusion, and the candidate is a miss with that reason. Every candidate is checked on the
untouched graph before the first rewrite, and a candidate is rewritten whole or left exactly as it was: a
pass never leaves half a fusion. The base counts rewrites and times the pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import onnx_graphsurgeon as gs


@dataclass
class Miss:
    """A place that looked like the pass's pattern but was not rewritten, and why."""

    where: str
    reason: str


@dataclass
class PassReport:
    name: str
    rewrites: int = 0
    misses: list[Miss] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def miss(self, where: str, reason: str) -> None:
        self.misses.append(Miss(where, reason))

    def to_json(self) -> dict:
        return {"pass": self.name, "rewrites": self.rewrites, "seconds": round(self.seconds, 3),
                "misses": [{"where": m.where, "reason": m.reason} for m in self.misses], "notes": self.notes}


@dataclass
class Context:
    """What passes share: the target, the precision, and what earlier passes learned of the model."""

    target: dict
    precision: str = "fp32"
    hidden_size: int | None = None
    num_heads: int | None = None
    seq: int | None = None          # the fixed sequence length, None if dynamic
    batch: int | None = None        # the fixed batch, None if dynamic
    layers_expected: int | None = None  # attention blocks found before fusion
    # new tensor name -> the names of the tensors it stands for (for INT8 ranges named after the fused graph)
    tensor_map: dict = field(default_factory=dict)
    qat_scales: dict = field(default_factory=dict)   # tensor -> per-tensor scale of a QAT graph's Q/DQ on it
    weight_scales: dict = field(default_factory=dict)  # weight constant -> its QAT scale per output channel
    softmax_of: dict = field(default_factory=dict)   # QKVToContext node -> the softmax output it replaced

    def alias(self, new: list, old: list) -> None:
        """Record that each tensor in ``new`` carries the values of (the largest of) the tensors in ``old``."""
        olds = [t if isinstance(t, str) else t.name for t in old]
        for t in new:
            self.tensor_map[t if isinstance(t, str) else t.name] = olds

    def plugin_version(self, plugin: str, varseqlen: bool = False) -> str:
        return self.target["plugins"]["varseqlen" if varseqlen else "fixed"][plugin]

    def proof_shape(self, seq: int = 16) -> tuple[int, int]:
        """(batch, seq) for a numeric proof: the model's own where they are fixed (a Reshape may have them
        baked in), else batch 2 and ``seq``."""
        return self.batch or 2, self.seq or seq


class Pass:
    """Subclasses set ``name`` and ``description`` and implement ``apply``."""

    name: str = ""
    description: str = ""

    def apply(self, graph: gs.Graph, ctx: Context, report: PassReport) -> None:
        raise NotImplementedError

    def __call__(self, graph: gs.Graph, ctx: Context) -> PassReport:
        report = PassReport(self.name)
        t = time.perf_counter()
        for key in ("_bertrt_taken", "_bertrt_taken_tensors"):  # names are collected again for each pass
            graph.__dict__.pop(key, None)                        # (graph_utils.unique_name)
        self.apply(graph, ctx, report)
        graph.cleanup().toposort()
        report.seconds = time.perf_counter() - t
        return report


class NoMatch(Exception):
    """Raised by a fusion pass's match or verify: the candidate does not fit; the message says why."""


@dataclass
class Match:
    """A candidate a fusion pass recognised: the tensors its nodes read (``inputs``: the values the pattern
    starts from, not the masks or shapes it also uses), the tensors the rewrite replaces (``outputs``), and
    whatever the pass's verify and rewrite need (``data``)."""

    inputs: list
    outputs: list
    data: Any = None
    nodes: list = field(default_factory=list)  # filled by the base: the nodes the rewrite replaces


class FusionPass(Pass):
    """The candidate loop for fusions; see the module docstring. Subclasses set ``what`` (the nodes'
    description, e.g. "attention nodes") and ``reference`` (the plugin they are checked against)."""

    what: str = "nodes"
    reference: str = ""
    tolerance: float = 1e-4

    def candidates(self, graph: gs.Graph, ctx: Context, report: PassReport) -> Iterable[tuple[str, gs.Node]]:
        """(where, anchor node) pairs, in topological order. A pass may report graph-level misses here."""
        raise NotImplementedError

    def match(self, graph: gs.Graph, ctx: Context, anchor: gs.Node) -> Match | None:
        """The candidate's Match, None if the anchor is not one (no miss), or raise NoMatch(reason)."""
        raise NotImplementedError

    def verify(self, graph: gs.Graph, ctx: Context, match: Match) -> float | None:
        """The largest relative difference from the reference on random inputs (None: proven in match)."""
        return None

    def rewrite(self, graph: gs.Graph, ctx: Context, match: Match) -> list:
        """Write the fusion; return the new tensors that now stand for ``match.outputs`` (in order). Read the
        tensors the fusion starts from in ``match.inputs``: an earlier rewrite may have replaced one (the
        residual of layer 2 is the output of layer 1's SkipLayerNorm), and the base keeps them current."""
        raise NotImplementedError

    def finish(self, graph: gs.Graph, ctx: Context, report: PassReport, matches: list[Match]) -> None:
        """Notes once every candidate is rewritten."""

    def apply(self, graph: gs.Graph, ctx: Context, report: PassReport) -> None:
        from bertrt.surgery.graph_utils import removal_problem, value_path
        from bertrt.surgery.region import RegionError

        accepted, claimed = [], set()
        for where, anchor in self.candidates(graph, ctx, report):
            if id(anchor) in claimed:  # inside a candidate already taken (the second mean of a LayerNorm)
                continue
            try:
                m = self.match(graph, ctx, anchor)
                if m is None:
                    continue
                m.nodes = value_path(m.inputs, m.outputs)
                if any(id(n) in claimed for n in m.nodes):
                    raise NoMatch(f"its nodes overlap a {self.what.split()[0]} candidate already taken")
                why = removal_problem(graph, m.inputs, m.nodes, m.outputs)
                if why is not None:
                    raise NoMatch(why)
                err = self.verify(graph, ctx, m)
                if err is not None and err > self.tolerance:
                    raise NoMatch(f"the {self.what} differ from {self.reference} by {err:.2g} (relative) on "
                                  f"random inputs")
            except NoMatch as e:
                report.miss(where, str(e))
                continue
            except RegionError as e:
                report.miss(where, f"cannot evaluate the {self.what}: {e}")
                continue
            accepted.append(m)
            claimed.update(id(n) for n in m.nodes)
            claimed.add(id(anchor))
        now: dict[int, gs.Tensor] = {}  # id(replaced tensor) -> the tensor standing for it
        for m in accepted:  # rewrite only after every check ran on the untouched graph
            m.inputs = [now.get(id(t), t) for t in m.inputs]
            for old, new in zip(m.outputs, self.rewrite(graph, ctx, m)):
                now[id(old)] = new
            report.rewrites += 1
        self.finish(graph, ctx, report, accepted)


_REGISTRY: dict[str, Pass] = {}


def register(cls):
    """Class decorator: make the pass available by its name."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_pass(name: str) -> Pass:
    from bertrt.errors import BertrtError

    _load_all()
    if name not in _REGISTRY:
        raise BertrtError(f"no pass named {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_passes() -> dict[str, Pass]:
    _load_all()
    return dict(_REGISTRY)


def _load_all():
    from bertrt.surgery import passes  # noqa: F401  (importing registers them)
