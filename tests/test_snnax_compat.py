"""snnax drop-in: every public name of snnax (b7a55c6) at the same module path, and an snnax script
run unchanged through the ``snnax`` -> ``snnkern`` alias (snnkern/snnax_alias.py).

``SNNAX_NAMES`` was written by reading snnax's source at b7a55c6: per module, the names it defines
(classes, functions, module-level values; not underscored) and the names it imports from other snnax
modules (reachable there too, e.g. ``snnax.snn.composed.default_forward_fn``, which snnax's own
tests import). Its own test suite is run by tools/run_snnax_tests.py (see docs/migrating.md).
"""
import importlib
import os
import runpy
import sys

import pytest

import snnkern
from snnkern import snnax_alias

HERE = os.path.dirname(os.path.abspath(__file__))

SNNAX_NAMES = {
    "": ["snn", "utils"],
    "functional.surrogate": ["SpikeFn", "superspike_surrogate", "sigmoid_surrogate", "piecewise_surrogate"],
    "snn": ["StatefulModel", "GraphStructure", "Sequential", "StatefulLayer", "SimpleLI", "SimpleLIF", "LIF",
            "LIFSoftReset", "AdaptiveLIF", "SimpleIAF", "IAF", "Flatten", "SpikingMaxPool2d", "SigmaDelta"],
    "snn.architecture": ["GraphStructure", "ForwardFnOutput", "ForwardFn", "default_forward_fn",
                         "delayed_forward_fn", "StatefulModel", "StatefulLayer", "RequiresStateLayer"],
    "snn.composed": ["gen_feed_forward_struct", "Sequential", "Parallel", "CompoundLayer", "SequentialLocalFeedback",
                     "StatefulModel", "GraphStructure", "default_forward_fn", "ForwardFn", "StatefulLayer",
                     "RequiresStateLayer", "StateShape"],
    "snn.layers": ["StatefulLayer", "RequiresStateLayer"],
    "snn.layers.stateful": ["StateShape", "StatefulOutput", "default_init_fn", "StatefulLayer", "RequiresStateLayer"],
    "snn.layers.lif": ["SimpleLIF", "LIF", "LIFSoftReset", "AdaptiveLIF", "StatefulLayer", "StateShape",
                       "default_init_fn", "StatefulOutput", "superspike_surrogate", "SpikeFn"],
    "snn.layers.iaf": ["SimpleIAF", "IAF", "StatefulLayer", "default_init_fn", "StateShape", "StatefulOutput",
                       "superspike_surrogate", "SpikeFn"],
    "snn.layers.li": ["SimpleLI", "StatefulLayer", "StateShape", "default_init_fn", "StatefulOutput"],
    "snn.layers.sigma_delta": ["SigmaDelta", "StatefulLayer", "StatefulOutput", "StateShape", "superspike_surrogate",
                               "SpikeFn"],
    "snn.layers.spike_counter": ["SpikeCounter", "StatefulLayer", "StateShape", "default_init_fn", "StatefulOutput"],
    "snn.layers.pooling": ["SpikingMaxPool1d", "SpikingMaxPool2d", "superspike_surrogate", "SpikeFn"],
    "snn.layers.flatten": ["Flatten"],
    "snn.layers.residual": ["ResNetBlock", "CompoundLayer", "default_forward_fn"],
    "snn.layers.srm": ["SRM", "StatefulLayer", "StateShape", "superspike_surrogate", "SpikeFn"],
    "utils.filter": ["filter_value_and_grad", "filter_grad"],
    "utils.tree": ["NEURON_PARAMS", "is_identifier", "has_identifier", "is_threshold", "is_decay_constant",
                   "is_decay_constants", "is_reset_val", "is_neuron_param", "apply_to_tree_leaf",
                   "apply_to_tree_leaf_bytype"],
}
# where each name is defined in snnkern: a name snnax imports into a module is the same object there
HOME = {"StatefulLayer": "snn.layers.stateful", "RequiresStateLayer": "snn.layers.stateful",
        "StateShape": "snn.layers.stateful", "StatefulOutput": "snn.layers.stateful",
        "default_init_fn": "snn.layers.stateful", "SpikeFn": "functional.surrogate",
        "superspike_surrogate": "functional.surrogate", "default_forward_fn": "snn.architecture",
        "ForwardFn": "snn.architecture", "StatefulModel": "snn.architecture", "GraphStructure": "snn.architecture",
        "CompoundLayer": "snn.composed"}


def _path(root, mod):
    return root + ("." + mod if mod else "")


@pytest.fixture
def alias():
    names = snnax_alias.install()
    yield names
    snnax_alias.uninstall()


@pytest.mark.parametrize("mod", sorted(SNNAX_NAMES))
def test_every_snnax_name_resolves(mod):
    module = importlib.import_module(_path("snnkern", mod))
    via_attr = snnkern                                 # import snnkern as snnax; snnax.snn.layers.srm.SRM
    for part in filter(None, mod.split(".")):
        via_attr = getattr(via_attr, part)
    assert via_attr is module
    for name in SNNAX_NAMES[mod]:
        assert hasattr(module, name), f"snnkern.{mod}.{name} is missing (snnax has snnax.{mod}.{name})"
        if name in HOME and HOME[name] != mod:
            home = importlib.import_module(_path("snnkern", HOME[name]))
            assert getattr(module, name) is getattr(home, name), f"snnkern.{mod}.{name} is another object"


def test_alias_maps_every_module(alias):
    assert "snnax.snn.layers.srm" in alias and "snnax.utils.tree" in alias
    for mod, names in SNNAX_NAMES.items():
        module = importlib.import_module(_path("snnax", mod))
        assert module is importlib.import_module(_path("snnkern", mod))
        for name in names:
            assert hasattr(module, name)
    from snnax.snn.architecture import delayed_forward_fn       # what snnax's architecture_test imports
    import snnax.snn as snn
    assert delayed_forward_fn is snnkern.snn.delayed_forward_fn and snn is snnkern.snn
    # a module not registered up front goes through the import hook, still as the snnkern module
    del sys.modules["snnax.snn.layers.srm"]
    assert importlib.import_module("snnax.snn.layers.srm") is sys.modules["snnkern.snn.layers.srm"]
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("snnax.no_such_module")


def test_uninstall_removes_the_alias(alias):
    snnax_alias.uninstall()
    assert not [n for n in sys.modules if n == "snnax" or n.startswith("snnax.")]
    assert snnax_alias._FINDER not in sys.meta_path


def test_snnax_style_training_script_runs_unchanged(alias):
    """tests/snnax_style_training.py imports only snnax (tutorial style: Sequential, filter_vmap, optax,
    filter_jit, snnax.utils.tree); through the alias it trains: the loss falls."""
    ns = runpy.run_path(os.path.join(HERE, "snnax_style_training.py"), run_name="snnax_script")
    losses = ns["losses"]
    assert len(losses) == ns["STEPS"] and all(l == l for l in losses)      # no NaN
    assert 0.6 < losses[0] < 0.8, f"first loss {losses[0]:.3f}: expected about ln 2 (untrained)"
    assert max(losses[-5:]) < 0.5 * losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-5:]}"
    model = ns["model"]
    assert type(model) is snnkern.snn.Sequential and abs(float(model.layers[1].threshold) - 0.5) > 1e-3   # trained
    assert ns["snn"] is snnkern.snn


def test_command_line_runner(tmp_path, capsys):
    script = tmp_path / "uses_snnax.py"
    script.write_text("import sys\nimport snnax.snn as snn\nfrom snnax.snn.layers.srm import SRM\n"
                      "print('ok', snn.__name__, SRM.__module__, sys.argv[1:])\n")
    try:
        snnax_alias.main([str(script), "--flag"])
    finally:
        snnax_alias.uninstall()
    assert capsys.readouterr().out.strip() == "ok snnkern.snn snnkern.snn.layers.srm ['--flag']"


def test_tree_helpers_that_raise_in_snnax():
    """snnax's is_neuron_param (arguments swapped) and apply_to_tree_leaf_bytype (a one-argument
    predicate called with two) raise TypeError; its is_threshold & co. are never true."""
    import jax.numpy as jnp
    from snnkern.snn.layers.stateful import StatefulLayer
    from snnkern.utils import tree
    snn = snnkern.snn
    model = snn.Sequential(snn.LIF([0.9, 0.8], threshold=jnp.array(1.0)), snn.SimpleLIF([0.9], threshold=0.5),
                           snn.SimpleLI([0.9]))
    lif, slif, li = model.layers
    assert tree.is_threshold(lif) and not tree.is_threshold(slif)       # a Python float is a constant
    assert tree.is_neuron_param(lif) and tree.is_neuron_param(li) and not tree.is_neuron_param(model.layers)
    assert tree.is_identifier("reset_val", lif) and not tree.has_identifier("reset_val", lif)
    out = tree.apply_to_tree_leaf_bytype(model, snn.LIF, "threshold", lambda t: t * 2)
    assert float(out.layers[0].threshold) == 2.0 and out.layers[1].threshold == 0.5
    out = tree.apply_to_tree_leaf(model, "threshold", lambda _: 0.25)
    assert out.layers[0].threshold == 0.25 and out.layers[1].threshold == 0.25
    p = StatefulLayer.init_parameters([0.9, 0.8], (3,))      # snnax's base-class helpers for custom layers
    assert p.dtype == jnp.float32 and p.shape == (2,) and StatefulLayer.init_parameters(p) is p
    assert lif.init_out((2, 3)).shape == (2, 3) and float(jnp.abs(lif.init_out(4)).max()) == 0.0


def test_migrating_doc_example():
    """The runnable example of docs/migrating.md (it installs the alias itself)."""
    text = open(os.path.join(HERE, os.pardir, "docs", "migrating.md")).read()
    start = text.index("```python\n", text.index("<!-- runnable example")) + len("```python\n")
    try:
        exec(compile(text[start:text.index("```", start)], "docs/migrating.md", "exec"), {})
    finally:
        snnax_alias.uninstall()
