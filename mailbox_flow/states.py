"""The mailbox lifecycle: the `State` enum, the transition table and the one shared machine.

This module is pure (no database, no HTTP). The transition table is the single place that says which
trigger is allowed from which state and which Mailivery call belongs to it; the flow runs that call as the
transition's own ``before`` callback, so a call that raises aborts the transition and leaves the state as
it was.

One `transitions.Machine` is built at import time and shared by every mailbox: a mailbox is never bound to
a machine of its own (that costs ~1 ms and tens of KB per object). A transition is run on a small plain
object with ``MACHINE.events[trigger].trigger(subject)``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transitions import Machine, MachineError
from transitions import State as TransitionsState
from transitions import Transition as TransitionsTransition

from .errors import InvalidTransition

__all__ = [
    "ACTIVE_STATES",
    "MACHINE",
    "STATE_BY_VALUE",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Effect",
    "State",
    "Subject",
    "TransitionRule",
    "allowed_triggers",
    "fire",
    "rule_for",
]


class State(enum.StrEnum):
    """Where a mailbox is in its life. Values are the lowercase names."""

    REQUESTED = "requested"
    OAUTH_SENT = "oauth_sent"
    PENDING = "pending"
    WARMING = "warming"
    PAUSED = "paused"
    REJECTED = "rejected"
    DELETED = "deleted"
    EXPIRED = "expired"


#: States after which a new mailbox for the same email may be requested.
TERMINAL_STATES: frozenset[State] = frozenset({State.REJECTED, State.DELETED, State.EXPIRED})
#: States that hold the email: at most one mailbox per email may be in one of these.
ACTIVE_STATES: frozenset[State] = frozenset(set(State) - TERMINAL_STATES)


class Effect(enum.StrEnum):
    """The Mailivery call a transition makes (its side effect)."""

    CONNECT = "connect_microsoft"
    START = "start_warmup"
    RESUME = "resume_warmup"
    PAUSE = "pause_warmup"
    DELETE = "delete_campaign"


@dataclass(frozen=True)
class TransitionRule:
    """One row of the transition table."""

    trigger: str
    sources: tuple[State, ...]
    dest: State
    effect: Effect | None = None
    #: True when the effect may be skipped because Mailivery itself reported the change.
    effect_optional: bool = False
    #: Name of a condition on the subject that must hold (e.g. resume from pending needs a past warmup).
    condition: str | None = None


TRANSITIONS: tuple[TransitionRule, ...] = (
    TransitionRule("send_oauth", (State.REQUESTED,), State.OAUTH_SENT, Effect.CONNECT),
    TransitionRule("mark_pending", (State.REQUESTED, State.OAUTH_SENT), State.PENDING),
    TransitionRule("start", (State.PENDING,), State.WARMING, Effect.START, effect_optional=True),
    TransitionRule("resume", (State.PAUSED,), State.WARMING, Effect.RESUME, effect_optional=True),
    TransitionRule(
        "resume", (State.PENDING,), State.WARMING, Effect.RESUME,
        effect_optional=True, condition="warmed_before",
    ),
    TransitionRule("pause", (State.WARMING,), State.PAUSED, Effect.PAUSE, effect_optional=True),
    TransitionRule("reject", (State.PENDING,), State.REJECTED),
    TransitionRule(
        "delete",
        (State.PENDING, State.REJECTED, State.WARMING, State.PAUSED),
        State.DELETED,
        Effect.DELETE,
        effect_optional=True,
    ),
    TransitionRule("expire", (State.REQUESTED, State.OAUTH_SENT), State.EXPIRED),
)

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(rule.trigger for rule in TRANSITIONS))


#: Each state by its value, a dict lookup (cheaper than ``State(value)``: every trigger and every row read
#: from the database turns a value into a member).
STATE_BY_VALUE: dict[str, State] = {s.value: s for s in State}
_VALUE: dict[str, str] = {s.value: s.value for s in State}  # a member finds its value too (StrEnum)


class Subject:
    """What a transition runs on: a plain object with a ``state`` and the effect to perform.

    The flow builds one per attempt; the machine's callbacks call ``perform_effect`` (the Mailivery call,
    supplied by the flow) and read ``warmed_before`` for the conditional ``resume`` from pending.
    The machine's states are the plain string values of `State` (``state_value``): `transitions`
    spends about a fifth more time per trigger on Enum states (it converts each to its name, several
    times per trigger, even for log lines that are never written).
    """

    __slots__ = ("effect_result", "run_effect", "skip_effect", "state_value", "warmed_before")

    def __init__(
        self,
        state: State | str,
        *,
        run_effect: Callable[[Effect], Any] | None = None,
        skip_effect: bool = False,
        warmed_before: bool = False,
    ) -> None:
        try:
            self.state_value: str = _VALUE[state]
        except KeyError:
            raise ValueError(f"{state!r} is not a mailbox state") from None
        self.run_effect = run_effect
        self.skip_effect = skip_effect
        self.warmed_before = warmed_before
        self.effect_result: Any = None

    @property
    def state(self) -> State:
        """The subject's state (the machine itself works on the plain value, ``state_value``)."""
        return STATE_BY_VALUE[self.state_value]


def _effect_callback(effect: Effect) -> Callable[[Any], None]:
    def perform(event: Any) -> None:
        subject: Subject = event.model
        if subject.skip_effect or subject.run_effect is None:
            return
        subject.effect_result = subject.run_effect(effect)

    perform.__name__ = f"perform_{effect.value}"
    return perform


def _condition(name: str) -> Callable[[Any], bool]:
    def check(event: Any) -> bool:
        return bool(getattr(event.model, name))

    return check


_TRANSITIONS_LOG = logging.getLogger("transitions.core")


class _MachineState(TransitionsState):
    """A state of the shared machine. Ours have no enter/exit callbacks, so entering and leaving one
    skips `transitions`' callback loop and its two log calls per step (a fifth of a trigger's time),
    unless its logger is on at DEBUG: then it runs (and logs) as usual."""

    def enter(self, event_data: Any) -> None:
        if self.on_enter or _TRANSITIONS_LOG.isEnabledFor(logging.DEBUG):
            super().enter(event_data)

    def exit(self, event_data: Any) -> None:
        if self.on_exit or _TRANSITIONS_LOG.isEnabledFor(logging.DEBUG):
            super().exit(event_data)


class _MachineTransition(TransitionsTransition):
    """A transition of the shared machine. When it has no prepare/after callbacks (ours have none),
    the machine has no machine-wide ones and `transitions`' logger is not at DEBUG, it runs just the
    steps that do something (conditions, ``before`` callbacks, the state change), not the empty
    callback loops and the log calls in between. Otherwise it runs `transitions`' own ``execute``.
    (tests/test_states.py checks it against a stock machine on every trigger, state and outcome.)"""

    def execute(self, event_data: Any) -> bool:
        machine = event_data.machine
        if (self.prepare or self.after or machine.before_state_change or machine.after_state_change
                or _TRANSITIONS_LOG.isEnabledFor(logging.DEBUG)):
            return bool(super().execute(event_data))
        if not self._eval_conditions(event_data):
            return False
        machine.callbacks(self.before, event_data)
        if self.dest:
            self._change_state(event_data)
        return True


class _Machine(Machine):
    state_cls = _MachineState
    transition_cls = _MachineTransition


def _build_machine(machine_cls: type[Machine] = _Machine) -> Machine:
    spec: list[dict[str, Any]] = []
    for rule in TRANSITIONS:
        entry: dict[str, Any] = {
            "trigger": rule.trigger,
            "source": [s.value for s in rule.sources],
            "dest": rule.dest.value,
        }
        if rule.effect is not None:
            entry["before"] = [_effect_callback(rule.effect)]
        if rule.condition is not None:
            entry["conditions"] = [_condition(rule.condition)]
        spec.append(entry)
    return machine_cls(
        model=None,
        states=[s.value for s in State],
        transitions=spec,
        model_attribute="state_value",
        initial=None,
        auto_transitions=False,
        send_event=True,
    )


#: The one machine every mailbox shares.
MACHINE: Machine = _build_machine()

_RULES: dict[tuple[str, State], TransitionRule] = {
    (rule.trigger, source): rule for rule in TRANSITIONS for source in rule.sources
}


def rule_for(trigger: str, state: State) -> TransitionRule | None:
    """The rule that lets ``trigger`` fire from ``state``, or None when it is not allowed."""
    return _RULES.get((trigger, state))


def allowed_triggers(state: State) -> list[str]:
    """Triggers allowed from ``state``, in table order."""
    return [t for t in TRIGGERS if (t, state) in _RULES]


def fire(trigger: str, subject: Subject, mailbox_id: Any = None) -> State:
    """Run ``trigger`` on ``subject`` through the shared machine and return the new state.

    Raises `InvalidTransition` when the trigger is not allowed from the subject's state (or its condition
    does not hold). Whatever the effect callback raises propagates and the state is left unchanged.
    """
    event = MACHINE.events.get(trigger)
    try:
        if event is not None and event.trigger(subject):
            return STATE_BY_VALUE[subject.state_value]
    except MachineError:
        pass
    raise InvalidTransition(trigger, subject.state, mailbox_id)
