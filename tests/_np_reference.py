"""Independent numpy (float32) re-implementation of SPEC.md §5, used as the oracle for neuron tests.

Nothing here imports snnkern: each step is written straight from the SPEC equations, in the SPEC's
operation order, so that float32 results agree with the package to rounding.
"""
import numpy as np

f32 = np.float32


def H(x):
    """Heaviside with H(0) = 1 (a spike fires when v - threshold >= 0)."""
    return np.heaviside(np.asarray(x, f32), f32(1.0)).astype(f32)


def clamp(lo, x, hi):
    return f32(min(max(f32(x), f32(lo)), f32(hi)))


def softplus(x):
    return f32(np.log1p(np.exp(f32(x))))


def simple_lif(p, state, I):
    mem, _ = state
    a = clamp(0.5, p["dc"][0], 1.0)
    mem = a * mem + (f32(1.0) - a) * I
    v = mem - f32(p["thr"])
    spk = H(v)
    r = mem * spk if p.get("reset_val") is None else softplus(p["reset_val"]) * spk
    mem = mem - r
    return [mem, spk], spk, v


def lif(p, state, I, soft=False):
    mem, syn, spk_prev = state
    rv = p.get("reset_val")
    if soft:
        r = spk_prev if rv is None else f32(rv) * spk_prev
    else:
        r = mem * spk_prev if rv is None else (mem - f32(rv)) * spk_prev
    mem = mem - r
    a = clamp(0.5, p["dc"][0], 1.0)
    b = clamp(0.5, p["dc"][1], 1.0)
    mem = a * mem + (f32(1.0) - a) * syn
    syn = b * syn + (f32(1.0) - b) * I
    v = mem - f32(p["thr"])
    spk = H(v)
    return [mem, syn, spk], spk, v


def lif_soft(p, state, I):
    return lif(p, state, I, soft=True)


def adaptive_lif(p, state, I):
    mem, ada, _ = state
    a_ = clamp(0.5, p["dc"][0], 1.0)
    beta = clamp(0.5, p.get("ada_decay", 0.8), 1.0)
    a = clamp(-1.0, p.get("ada_coupling", 0.5), 1.0)
    b = clamp(0.0, p.get("ada_step", 1.0), 2.0)
    mem = a_ * mem + (f32(1.0) - a_) * (I + ada)
    v = mem - f32(p["thr"])
    spk = H(v)
    ada_new = (f32(1.0) - beta) * a * mem + beta * ada - b * spk
    rv = p.get("reset_val")
    r = mem * spk if rv is None else f32(rv) * spk
    mem = mem - r
    return [mem, ada_new, spk], spk, v


def simple_iaf(p, state, I):
    mem, _ = state
    mem = (mem - f32(p.get("leak", 0.0))) + I
    v = mem - f32(p["thr"])
    spk = H(v)
    rv = p.get("reset_val")
    r = mem * spk if rv is None else f32(rv) * spk
    mem = mem - r
    return [mem, spk], spk, v


def iaf(p, state, I):
    mem, syn, _ = state
    b = clamp(0.5, p["dc"][0], 1.0)
    mem = (mem - f32(p.get("leak", 0.0))) + syn
    syn = b * syn + (f32(1.0) - b) * I
    v = mem - f32(p["thr"])
    spk = H(v)
    rv = p.get("reset_val")
    r = mem * spk if rv is None else f32(rv) * spk
    mem = mem - r
    return [mem, syn, spk], spk, v


def simple_li(p, state, I):
    (mem,) = state
    a = clamp(0.5, p["dc"][0], 1.0)
    mem = a * mem + (f32(1.0) - a) * I
    return [mem], mem, None


def sigma_delta(p, state, I):
    i, e, i_mem, s, _ = state
    d0, d1, d2 = (f32(d) for d in p["dc"])
    i = i * d0 + I
    e = i - s
    i_mem = i_mem * d1 + e
    v = i_mem - f32(p["thr"])
    spike = H(v)
    s = s * d2 + spike
    return [i, e, i_mem, s, spike], spike, v


def spike_counter(p, state, I):
    count, _ = state
    spk = I
    count = count + I
    return [count, spk], spk, None


def run(step, p, state0, xs):
    """Run `step` over xs (T, ...). Returns (states per step, outputs (T, ...), min |v - thr|)."""
    state = [np.asarray(s, f32) for s in state0]
    states, outs, margin = [], [], np.inf
    for x in xs:
        state, out, v = step(p, state, np.asarray(x, f32))
        states.append([np.array(s) for s in state])
        outs.append(np.array(out))
        if v is not None:
            margin = min(margin, float(np.min(np.abs(v))))
    return states, np.stack(outs), margin


def lif_trace(dc, thr, currents, mem0=None):
    """LIF outputs (T, n) for a sequence of synaptic currents (T, n); numpy float32."""
    n = currents.shape[-1]
    state0 = [np.zeros(n, f32) if mem0 is None else mem0, np.zeros(n, f32), np.zeros(n, f32)]
    return run(lif, {"dc": dc, "thr": thr}, state0, currents)
