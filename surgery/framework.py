"""The pass framework: a pass has a name, a one-line description and one job, and returns a report.

Like a rewrite rule, a fusion pass finds candidates (a pattern anchored on one op), checks each one
(a check returns the reason it does not fit, or None), and rewrites the ones that fit. A candidate is
either rewritten whole or left exactly as it was: a pass never leaves half a fusion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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


class Pass:
    """Subclasses set ``name`` and ``description`` and implement ``apply``."""

    name: str = ""
    description: str = ""

    def apply(self, graph: gs.Graph, ctx: Context, report: PassReport) -> None:
        raise NotImplementedError

    def __call__(self, graph: gs.Graph, ctx: Context) -> PassReport:
        report = PassReport(self.name)
        t = time.perf_counter()
        self.apply(graph, ctx, report)
        graph.cleanup().toposort()
        report.seconds = time.perf_counter() - t
        return report


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
