"""remix_jax.compile_clock: the seconds a process spends building programs, from jax.monitoring's events."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax import compile_clock


def test_a_new_program_is_counted_and_a_cached_one_is_not():
    f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum())
    x, y = np.ones((7, 13), np.float32), np.ones((8, 13), np.float32)  # host arrays: making them compiles nothing
    s0, p0 = compile_clock.seconds(), compile_clock.programs()
    f(x).block_until_ready()
    s1, p1 = compile_clock.seconds(), compile_clock.programs()
    assert p1 == p0 + 1 and s1 > s0
    f(x).block_until_ready()  # the same shapes: no new program
    assert (compile_clock.seconds(), compile_clock.programs()) == (s1, p1)
    f(y).block_until_ready()  # a new shape: a new program
    assert compile_clock.programs() == p1 + 1


def test_the_clock_adds_up_the_lowering_and_compile_events_once():
    seen = []

    def listener(event, duration, **_):
        seen.append((event, duration))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        compile_clock.install()
        compile_clock.install()  # a second install adds no second listener
        s0 = compile_clock.seconds()
        jax.jit(lambda a: a @ a.T + 1.0)(np.ones((5, 3), np.float32)).block_until_ready()
        got = compile_clock.seconds() - s0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    want = sum(d for e, d in seen if e in compile_clock.EVENTS)
    assert {e for e, _ in seen} >= set(compile_clock.EVENTS)
    assert want > 0 and got == pytest.approx(want, rel=1e-9)
