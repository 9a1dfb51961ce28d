"""The state diagram, drawn from the shared machine itself: Mermaid text, Graphviz DOT, or an SVG image.

    from mailbox_flow import diagram

    text = diagram.mermaid()     # a ``stateDiagram-v2`` for Markdown, GitHub and MkDocs
    image = diagram.svg()        # an SVG document (needs Graphviz's ``dot`` on PATH)
    diagram.render("svg")        # the same, by format name ("mermaid", "dot" or "svg")

The arrows come from walking `mailbox_flow.states.MACHINE` (every event, every source state, every
transition it holds), so the picture is the machine's own; each arrow is labelled with its trigger
and the Mailivery call that the transition table (`mailbox_flow.states.TRANSITIONS`) attaches to it.
Every function returns text and has no side effects.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigurationError
from .states import MACHINE, TERMINAL_STATES, Effect, State, rule_for

__all__ = ["CALLS", "FORMATS", "Edge", "dot", "edges", "mermaid", "render", "source_digest", "svg"]

#: The formats `render` accepts.
FORMATS: tuple[str, ...] = ("mermaid", "svg", "dot")

#: How each side effect reads on the diagram: the Mailivery request it makes.
CALLS: dict[Effect, str] = {
    Effect.CONNECT: "POST /campaigns/microsoft",
    Effect.START: "PATCH start-warmup",
    Effect.RESUME: "PATCH resume-warmup",
    Effect.PAUSE: "PATCH pause-warmup",
    Effect.DELETE: "DELETE campaign",
}

#: The state a new mailbox starts in (`MailboxFlow.request_connection` records it).
INITIAL_STATE = State.REQUESTED

_CONDITION_TEXT = {"warmed_before": "if warmed before"}


@dataclass(frozen=True, slots=True)
class Edge:
    """One arrow: a transition the machine allows, with what the table says it does."""

    source: State
    dest: State
    trigger: str
    effect: Effect | None
    #: True when the call is skipped because Mailivery itself reported the change.
    effect_optional: bool
    condition: str | None

    @property
    def call(self) -> str | None:
        """The Mailivery request this transition makes (None for a transition without one)."""
        return CALLS[self.effect] if self.effect is not None else None

    @property
    def label(self) -> str:
        """``trigger``, its condition if any, and ``/ call`` when it calls Mailivery."""
        text = self.trigger
        if self.condition is not None:
            text += f" ({_CONDITION_TEXT.get(self.condition, self.condition)})"
        if self.call is not None:
            text += f" / {self.call}"
        return text


def edges() -> list[Edge]:
    """Every transition of the shared machine, in the machine's order (event, then source state)."""
    found: list[Edge] = []
    for trigger, event in MACHINE.events.items():
        for source_name, transitions in event.transitions.items():
            source = _state(source_name)
            for transition in transitions:
                dest = _state(transition.dest)
                rule = rule_for(trigger, source)
                if rule is None or rule.dest is not dest:
                    raise RuntimeError(f"the machine and the transition table disagree on {trigger} "
                                       f"from {source.value}")
                found.append(Edge(source, dest, trigger, rule.effect, rule.effect_optional,
                                  rule.condition))
    return found


def _state(name: object) -> State:
    """A state as the machine names it (enum member name) or as we do (value)."""
    if isinstance(name, State):
        return name
    text = str(name)
    return State[text] if text in State.__members__ else State(text)


def _states(found: Iterable[Edge]) -> list[State]:
    """The states in enum order, keeping only those the machine mentions."""
    used = {e.source for e in found} | {e.dest for e in found} | {INITIAL_STATE}
    return [s for s in State if s in used]


def mermaid() -> str:
    """The state diagram as Mermaid ``stateDiagram-v2`` text (no surrounding code fence)."""
    found = edges()
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL_STATE.value}"]
    lines += [f"    {e.source.value} --> {e.dest.value}: {e.label}" for e in found]
    lines += [f"    {s.value} --> [*]" for s in _states(found) if s in TERMINAL_STATES]
    return "\n".join(lines) + "\n"


def dot() -> str:
    """The state diagram as Graphviz DOT source (what `svg` renders)."""
    found = edges()
    lines = [
        "digraph mailbox_flow {",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=10, nodesep=0.5, ranksep=0.9, '
        'bgcolor="transparent", labelloc=b, fontcolor="#455a64", '
        'label="dashed: no Mailivery call    double border: terminal state"];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=12, '
        'color="#455a64", fillcolor="#eceff1"];',
        '  edge [fontname="Helvetica", fontsize=10, color="#455a64"];',
        '  start [shape=point, width=0.15, label=""];',
    ]
    for state in _states(found):
        attrs = f'label="{state.value}"'
        if state in TERMINAL_STATES:
            attrs += ', peripheries=2, fillcolor="#ffffff"'
        elif state is State.WARMING:
            attrs += ', fillcolor="#c8e6c9"'
        lines.append(f"  {state.value} [{attrs}];")
    lines.append(f"  start -> {INITIAL_STATE.value};")
    for e in found:
        label = e.trigger
        if e.condition is not None:
            label += f"\\n({_CONDITION_TEXT.get(e.condition, e.condition)})"
        if e.call is not None:
            label += f"\\n{e.call}"
        style = "" if e.effect is not None else ", style=dashed"
        lines.append(f'  {e.source.value} -> {e.dest.value} [label="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def source_digest() -> str:
    """A short hash of the DOT source; `svg` embeds it so a stale image can be told from a fresh one."""
    return hashlib.sha256(dot().encode()).hexdigest()[:16]


DIGEST_MARK = "mailbox_flow.diagram source "


def svg(dot_command: str = "dot", timeout: float = 30.0) -> str:
    """The state diagram as an SVG document, rendered by Graphviz (``dot -Tsvg``).

    Raises `ConfigurationError` when Graphviz is not installed (``apt-get install graphviz``,
    ``brew install graphviz``); `mermaid` needs nothing.
    """
    executable = shutil.which(dot_command)
    if executable is None:
        raise ConfigurationError(
            f"Graphviz {dot_command!r} was not found on PATH: install Graphviz "
            "(apt-get install graphviz, brew install graphviz) or use the Mermaid diagram"
        )
    done = subprocess.run(
        [executable, "-Tsvg"], input=dot(), capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    if done.returncode != 0 or "<svg" not in done.stdout:
        raise RuntimeError(f"Graphviz failed ({done.returncode}): {done.stderr.strip()[:500]}")
    mark = f"<!-- {DIGEST_MARK}{source_digest()} -->"
    head, sep, rest = done.stdout.partition("\n")
    if head.startswith("<?xml") and sep:
        return f"{head}\n{mark}\n{rest}"
    return f"{mark}\n{done.stdout}"


def render(fmt: str) -> str:
    """The diagram in ``fmt``: ``"mermaid"``, ``"dot"`` or ``"svg"`` (see `FORMATS`)."""
    if fmt == "mermaid":
        return mermaid()
    if fmt == "dot":
        return dot()
    if fmt == "svg":
        return svg()
    raise ValueError(f"unknown diagram format {fmt!r}; choose one of {', '.join(FORMATS)}")
