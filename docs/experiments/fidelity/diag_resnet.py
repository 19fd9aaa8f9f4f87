"""Input-sensitivity and saturation of sigmoid ResNet variants (issue 11). PYTHONPATH=. python docs/experiments/fidelity/diag_resnet.py"""
import sys, json, numpy as np, jax, jax.numpy as jnp, flax.linen as nn
import dlg_jax.models.resnet as RN
from dlg_jax.data.datasets import get_dataset
from dlg_jax.models import build_model
from dlg_jax.victim.gradients import shared_gradient
ds = sys.argv[1] if len(sys.argv) > 1 else "colour"
src = get_dataset(ds)
x, y = src.examples(np.arange(4))
rec = []
def spy(z):
    rec.append(np.asarray(z)); return jax.nn.sigmoid(z)
variants = {
 "lenet": ("lenet", {}),
 "r20 sig he strided no-norm": ("resnet20", dict(activation="sigmoid")),
 "r20 sig dlg-init strided no-norm": ("resnet20", dict(activation="sigmoid", init="dlg")),
 "r20 sig he strided batchnorm": ("resnet20", dict(activation="sigmoid", norm="batch")),
 "r20 DLG (sig, bn, no strides, dlg init)": ("resnet20", dict(activation="sigmoid", norm="batch", strides=False, init="dlg")),
 "r20 sig, no-norm, no strides, dlg init": ("resnet20", dict(activation="sigmoid", strides=False, init="dlg")),
 "r56 DLG": ("resnet56", dict(activation="sigmoid", norm="batch", strides=False, init="dlg")),
 "r56 sig he strided no-norm": ("resnet56", dict(activation="sigmoid")),
}
for label, (name, opts) in variants.items():
    net = build_model(name, src.input_shape, src.num_classes, **opts)
    p = net.init(jax.random.fold_in(jax.random.key(0), 0x5EED))
    RN.ACTIVATIONS["sigmoid"] = spy; rec.clear()
    if name == "lenet":
        import dlg_jax.models.lenet as L; old = L.nn.sigmoid; L.nn.sigmoid = spy
    net.apply(p, jnp.asarray(x[:1]))
    if name == "lenet": L.nn.sigmoid = old
    RN.ACTIVATIONS["sigmoid"] = jax.nn.sigmoid
    sat = [float(np.mean(np.abs(z) > 4)) for z in rec]
    dsig = [float(np.mean(jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z)))) for z in rec]
    g = jax.jit(lambda xx, yy: shared_gradient(net, p, xx[None], yy[None]))
    leaves = lambda t: [np.asarray(l).ravel() for l in jax.tree.leaves(t)]
    g0 = leaves(g(x[0], y[0])); g1 = leaves(g(x[1], y[0]))
    n0 = np.sqrt(sum((a**2).sum() for a in g0)); d01 = np.sqrt(sum(((a-b)**2).sum() for a, b in zip(g0, g1)))
    # directional sensitivity of the gradient to the input: |dg/dx v| / |g| for a unit-rms v
    v = jax.random.normal(jax.random.key(1), x[0].shape)
    _, jv = jax.jvp(lambda xx: g(xx, y[0]), (jnp.asarray(x[0]),), (v,))
    jvl = leaves(jv); njv = np.sqrt(sum((a**2).sum() for a in jvl))
    # first conv layer's share of the gradient norm
    first = np.sqrt((g0[0]**2).sum()) / n0 if True else 0
    names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(p)]
    print(json.dumps(dict(model=label, sigmoid_layers=len(rec), saturated_frac_first_last=[round(sat[0],3), round(sat[-1],3)],
        max_saturated=round(max(sat),3), mean_dsigmoid_first_last=[round(dsig[0],4), round(dsig[-1],4)], min_mean_dsigmoid=round(min(dsig),4),
        grad_norm=float(n0), rel_grad_change_other_image=float(d01/n0), rel_jvp_unit_noise=float(njv/n0),
        first_leaf=names[0], first_leaf_share=float(first))), flush=True)
