"""A training script written for snnax, in the style of snnax's tutorial_Introduction notebook.

It imports only ``snnax``: tests/test_snnax_compat.py runs it unchanged with ``snnax`` aliased to
snnkern (``python -m snnkern.snnax_alias tests/snnax_style_training.py`` does the same from a shell).
Task: 16 input channels spike at random; the label says which half spikes more.
"""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jrand
import optax

import snnax.snn as snn
from snnax.functional.surrogate import superspike_surrogate
from snnax.utils.tree import apply_to_tree_leaf

STEPS = 30
BATCHSIZE = 16
TIMESTEPS = 12
NUM_IN, NUM_HIDDEN, NUM_LABELS = 16, 32, 2
SEED = 42

key = jrand.PRNGKey(SEED)
init_key, data_key, key = jrand.split(key, 3)
keys = jrand.split(init_key, 4)

model = snn.Sequential(
    eqx.nn.Linear(NUM_IN, NUM_HIDDEN, key=keys[0], use_bias=False),
    snn.LIF([.95, .85], spike_fn=superspike_surrogate(10.)),
    eqx.nn.Dropout(p=.1),
    eqx.nn.Linear(NUM_HIDDEN, NUM_LABELS, key=keys[1], use_bias=False),
    snn.SimpleLI([.9]),
)
# snnax's tree helpers: a trainable (array) threshold, lower than the default
model = apply_to_tree_leaf(model, "threshold", lambda _: jnp.asarray(0.5))


def make_batch(key):
    k_rate, k_spikes = jrand.split(key)
    labels = jrand.bernoulli(k_rate, 0.5, (BATCHSIZE,)).astype(jnp.int32)
    rates = jnp.where(labels[:, None] == 1, jnp.repeat(jnp.array([0.15, 0.45]), NUM_IN // 2),
                      jnp.repeat(jnp.array([0.45, 0.15]), NUM_IN // 2))
    spikes = jrand.bernoulli(k_spikes, rates[:, None, :], (BATCHSIZE, TIMESTEPS, NUM_IN))
    return spikes.astype(jnp.float32), labels


def loss_fn(model, init_states, data, target, key):
    batched = eqx.filter_vmap(model, in_axes=(None, 0, None))
    states, outs = batched(init_states, data, key)
    logits = jnp.max(outs[-1], axis=1)        # membrane read-out of the last layer, over time
    return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()


loss_and_grads = eqx.filter_value_and_grad(loss_fn)


@eqx.filter_jit
def update(model, opt_state, data, targets, key):
    init_key, grad_key = jrand.split(key)
    states = model.init_state((NUM_IN,), init_key)
    loss_value, grads = loss_and_grads(model, states, data, targets, grad_key)
    updates, opt_state = optim.update(grads, opt_state)
    return eqx.apply_updates(model, updates), opt_state, loss_value


optim = optax.adam(3e-2)
opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
data, targets = make_batch(data_key)
losses = []
for step in range(STEPS):
    model_key, key = jrand.split(key)
    model, opt_state, loss = update(model, opt_state, data, targets, model_key)
    losses.append(float(loss))

if __name__ == "__main__":
    print(f"loss: {losses[0]:.3f} -> {losses[-1]:.3f}")
