"""Optional in-process peer: the feed-forward model written with spyx neurons (never required).

spyx (``kmheckel/spyx``) runs time-major like snnax. Its flax-nnx API (``spyx.nn.CuBaLIF(shape,
alpha, beta, rngs=...)``, ``__call__(x, VI) -> (spikes, VI)``) is used with the *same calibrated
weights*; the input current is scaled by ``(1-a)(1-b)`` so the membrane has snnkern's magnitude.
The neuron differs in details (reset order, no one-step edge delay), so its firing rates are
printed for comparison and its speed-up is indicative only. The older haiku-based spyx is not
supported (skipped with a note).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

__all__ = ["unavailable", "make_fns"]


def unavailable(kind: str) -> Optional[str]:
    """None if the spyx peer can run model ``kind``, else why not."""
    if kind != "ff":
        return "spyx peer: feed-forward model only"
    try:
        import spyx.nn  # noqa: F401
        from flax import nnx  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure means: skip)
        return f"spyx not importable ({type(e).__name__}: {e})"
    return None


def make_fns(spec, model) -> Tuple[object, Callable, Callable, Callable]:
    """(params, forward, value_and_grad(loss), rates) for spyx with ``model``'s weights."""
    import spyx.nn as snx
    from flax import nnx

    a, b = 0.95, 0.9                       # snnkern LIF([alpha (membrane), beta (synapse)])
    gain = (1.0 - a) * (1.0 - b)
    try:
        lifs = [snx.CuBaLIF((spec.N,), alpha=b, beta=a, rngs=nnx.Rngs(0)) for _ in range(2)]
    except TypeError as e:
        raise RuntimeError(f"this spyx has no flax-nnx CuBaLIF(shape, alpha, beta, rngs=...) ({e})") from e
    l0, l2 = model.layers[0], model.layers[2]
    params = {"w1": l0.weight, "b1": l0.bias, "w2": l2.weight, "b2": l2.bias}

    def run(params, x):                    # x: (B, T, N_in)
        B = x.shape[0]
        st0 = [lif.initial_state(B) for lif in lifs]

        def body(st, xt):
            s1, v1 = lifs[0](gain * (xt @ params["w1"].T + params["b1"]), st[0])
            s2, v2 = lifs[1](gain * (s1 @ params["w2"].T + params["b2"]), st[1])
            return [v1, v2], (s1, s2)

        _, (s1, s2) = jax.lax.scan(body, st0, jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(s1, 0, 1), jnp.swapaxes(s2, 0, 1)

    def forward(params, x):
        return run(params, x)[1]

    def loss(params, x):
        return jnp.sum(forward(params, x))

    def rates(params, x):
        s1, s2 = run(params, x)
        return jnp.stack([jnp.mean(s1), jnp.mean(s2)])

    return params, forward, jax.value_and_grad(loss), rates
