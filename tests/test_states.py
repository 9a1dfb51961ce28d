"""The transition table and the shared machine, without a database."""

from __future__ import annotations

import itertools
import logging
import tracemalloc
from typing import Any

import pytest
from transitions import Machine

from mailbox_flow.errors import InvalidTransition
from mailbox_flow.states import (
    ACTIVE_STATES,
    MACHINE,
    TERMINAL_STATES,
    TRANSITIONS,
    Effect,
    State,
    Subject,
    _build_machine,
    allowed_triggers,
    fire,
    rule_for,
)

TRIGGERS = sorted({rule.trigger for rule in TRANSITIONS})
ALLOWED = [(rule.trigger, source, rule) for rule in TRANSITIONS for source in rule.sources]
DISALLOWED = [
    (trigger, state)
    for trigger, state in itertools.product(TRIGGERS, State)
    if rule_for(trigger, state) is None
]


def test_state_values_are_lowercase_names() -> None:
    """Each State's value is its lowercase name, so it can be stored and parsed as text."""
    assert [s.value for s in State] == [s.name.lower() for s in State]


def test_terminal_and_active_states_partition_all_states() -> None:
    """Every state is either terminal or active, never both."""
    assert set(State) == TERMINAL_STATES | ACTIVE_STATES
    assert not TERMINAL_STATES & ACTIVE_STATES
    assert {State.DELETED, State.EXPIRED, State.REJECTED} == TERMINAL_STATES


def test_table_matches_the_design() -> None:
    """The table is the design's: trigger → sources → destination → Mailivery call."""
    table = {(r.trigger, s): (r.dest, r.effect) for r in TRANSITIONS for s in r.sources}
    assert table == {
        ("send_oauth", State.REQUESTED): (State.OAUTH_SENT, Effect.CONNECT),
        ("mark_pending", State.REQUESTED): (State.PENDING, None),
        ("mark_pending", State.OAUTH_SENT): (State.PENDING, None),
        ("start", State.PENDING): (State.WARMING, Effect.START),
        ("resume", State.PENDING): (State.WARMING, Effect.RESUME),
        ("resume", State.PAUSED): (State.WARMING, Effect.RESUME),
        ("pause", State.WARMING): (State.PAUSED, Effect.PAUSE),
        ("reject", State.PENDING): (State.REJECTED, None),
        ("delete", State.PENDING): (State.DELETED, Effect.DELETE),
        ("delete", State.REJECTED): (State.DELETED, Effect.DELETE),
        ("delete", State.WARMING): (State.DELETED, Effect.DELETE),
        ("delete", State.PAUSED): (State.DELETED, Effect.DELETE),
        ("expire", State.REQUESTED): (State.EXPIRED, None),
        ("expire", State.OAUTH_SENT): (State.EXPIRED, None),
    }


@pytest.mark.parametrize(("trigger", "source", "rule"), ALLOWED,
                         ids=[f"{t}-{s.value}" for t, s, _ in ALLOWED])
def test_allowed_trigger_moves_state_and_runs_its_effect(trigger: str, source: State, rule) -> None:
    """An allowed trigger reaches its destination and runs its Mailivery call exactly once."""
    calls: list[Effect] = []
    subject = Subject(source, run_effect=calls.append, warmed_before=True)
    assert fire(trigger, subject) is rule.dest
    assert subject.state is rule.dest
    assert calls == ([rule.effect] if rule.effect else [])


@pytest.mark.parametrize(("trigger", "state"), DISALLOWED,
                         ids=[f"{t}-{s.value}" for t, s in DISALLOWED])
def test_disallowed_trigger_raises_and_calls_nothing(trigger: str, state: State) -> None:
    """A trigger not allowed from a state raises InvalidTransition and makes no call."""
    calls: list[Effect] = []
    subject = Subject(state, run_effect=calls.append)
    with pytest.raises(InvalidTransition) as info:
        fire(trigger, subject, mailbox_id="m-1")
    assert (info.value.trigger, info.value.state, info.value.mailbox_id) == (trigger, state, "m-1")
    assert subject.state is state
    assert calls == []


def test_resume_from_pending_needs_a_past_warmup() -> None:
    """``resume`` from pending is refused unless the mailbox warmed before."""
    with pytest.raises(InvalidTransition):
        fire("resume", Subject(State.PENDING, run_effect=lambda e: None))
    assert fire("resume", Subject(State.PENDING, warmed_before=True)) is State.WARMING


def test_failing_effect_aborts_the_transition() -> None:
    """When the Mailivery call raises, the error propagates and the state does not move."""

    def boom(effect: Effect) -> None:
        raise RuntimeError(effect.value)

    subject = Subject(State.PENDING, run_effect=boom)
    with pytest.raises(RuntimeError, match="start_warmup"):
        fire("start", subject)
    assert subject.state is State.PENDING


def test_skipped_effect_moves_without_calling() -> None:
    """A change Mailivery reported itself moves the state with no call."""
    calls: list[Effect] = []
    subject = Subject(State.WARMING, run_effect=calls.append, skip_effect=True)
    assert fire("pause", subject) is State.PAUSED
    assert calls == []


def test_unknown_trigger_is_an_invalid_transition() -> None:
    """A trigger name the table does not know raises InvalidTransition."""
    with pytest.raises(InvalidTransition):
        fire("explode", Subject(State.PENDING))


def test_allowed_triggers_lists_the_table() -> None:
    """allowed_triggers answers from the table."""
    assert allowed_triggers(State.PENDING) == ["start", "resume", "reject", "delete"]
    assert allowed_triggers(State.DELETED) == []


def test_one_shared_machine_with_no_per_subject_state() -> None:
    """Subjects are not registered on the machine: firing many costs no memory per subject."""
    assert MACHINE.models == []
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(2000):
        fire("start", Subject(State.PENDING, skip_effect=True))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert MACHINE.models == []
    assert grown < 200_000  # far below 2000 machines x tens of KB each


def test_subject_refuses_an_unknown_state() -> None:
    """A subject is built from a `State` (or its value) only: anything else is a ValueError."""
    assert Subject("pending").state is State.PENDING
    with pytest.raises(ValueError, match="not a mailbox state"):
        Subject("bogus")


def test_transitions_debug_log_still_tells_each_step(caplog: pytest.LogCaptureFixture) -> None:
    """Entering and leaving states skips transitions' bookkeeping only while nobody listens at DEBUG:
    with its logger at DEBUG, the usual lines about exiting and entering states are there."""
    with caplog.at_level(logging.DEBUG, logger="transitions.core"):
        assert fire("expire", Subject(State.OAUTH_SENT)) is State.EXPIRED
    text = caplog.text
    assert "Exiting state oauth_sent" in text and "Entering state expired" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transitions.core"):
        fire("expire", Subject(State.OAUTH_SENT))
    assert "Entering state" not in caplog.text


def _run(machine: Any, trigger: str, state: State, warmed: bool, mode: str) -> tuple[Any, ...]:
    calls: list[Effect] = []

    def effect(e: Effect) -> str:
        calls.append(e)
        if mode == "raise":
            raise RuntimeError(e.value)
        return f"done {e.value}"

    subject = Subject(state, run_effect=effect, skip_effect=mode == "skip", warmed_before=warmed)
    try:
        result: Any = machine.events[trigger].trigger(subject)
    except Exception as exc:  # MachineError (not allowed) or the effect's own error
        result = (type(exc).__name__, str(exc))
    return result, subject.state_value, calls, subject.effect_result


def test_lean_machine_agrees_with_a_stock_machine() -> None:
    """The shared machine's shortcuts (lean states and transitions) change nothing: for every trigger
    from every state, with and without a past warmup, with the call succeeding, failing or skipped,
    a stock `transitions.Machine` built from the same table gives the same result, state, calls and
    effect result."""
    stock = _build_machine(Machine)
    assert type(stock) is Machine and type(MACHINE) is not Machine
    checked = 0
    for trigger, state, warmed, mode in itertools.product(
        TRIGGERS, State, (False, True), ("ok", "raise", "skip")
    ):
        assert _run(MACHINE, trigger, state, warmed, mode) == _run(stock, trigger, state, warmed, mode)
        checked += 1
    assert checked == len(TRIGGERS) * len(State) * 6
