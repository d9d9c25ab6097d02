"""Distribution targets on the zoo's families, in one run: each net is trained 150 Adam steps on
the digits (padded to 32x32), then 6 samples of the target 0.5 / 0.3 / 0.2 on classes 3 / 7 / 1
are inverted inside [0, 1] (atol 0.02) by ForwardPassInversion and GeneralizedInversion.
Printed: accuracy on 500 training images, verified samples and seconds, or the ValueError of a
target that the net provably cannot reach.

    python benchmarks/zoo_distribution.py [NET ...]   (zoo names, or "selu-logits")
"""
import sys
import time

import torch
from torch import nn
from captum_invert import ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert.models.zoo import zoo_model, pad_to_32, recalibrate_batchnorm
from captum_invert.datasets import load_dataset
x, y = load_dataset("digits", "train").tensors
x = pad_to_32(x)
dist = torch.zeros(10); dist[3], dist[7], dist[1] = 0.5, 0.3, 0.2
def fit(net, steps=150):
    opt = torch.optim.Adam(net.parameters(), 2e-3); g = torch.Generator().manual_seed(0); net.train()
    for _ in range(steps):
        i = torch.randint(len(x), (64,), generator=g); opt.zero_grad()
        nn.functional.cross_entropy(net(x[i]), y[i]).backward(); opt.step()
    return recalibrate_batchnorm(net, x[:512]).eval()
names = sys.argv[1:] or ["bn-mlp", "selu-logits", "resnet18 (torchvision)", "mobilenet_v3_small (torchvision)", "convnext_atto (timm)", "vit (timm)", "mlp-mixer (timm)", "swin (timm)"]
for name in names:
    torch.manual_seed(0)
    if name == "selu-logits":
        net = nn.Sequential(nn.Flatten(), nn.Linear(1024, 256), nn.SELU(), nn.Linear(256, 256), nn.SELU(), nn.Linear(256, 10), nn.SELU())
        net.input_shape = (1, 32, 32)
    else:
        net = zoo_model(name)
    net = fit(net)
    acc = float((net(x[:500]).argmax(1) == y[:500]).float().mean())
    for cls in (ForwardPassInversion, GeneralizedInversion):
        t0 = time.perf_counter()
        try:
            cls(net, input_shape=(1, 32, 32)).attribute(target=dist, n_samples=6, seed=0, input_range=(0, 1), atol=0.02)
            got = 6
        except InversionError as e:
            got = e.n_verified
        except ValueError as e:  # a target that the net provably cannot reach, before any work
            print(f"{name:34s} acc {acc:.2f} {cls.__name__:22s} out of reach ({time.perf_counter()-t0:.1f}s): {str(e)[:150]}", flush=True)
            continue
        print(f"{name:34s} acc {acc:.2f} {cls.__name__:22s} verified {got}/6  {time.perf_counter()-t0:6.1f}s", flush=True)
