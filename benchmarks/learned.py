"""The default decoder's CPU path against the plain PyTorch layers a user would write, in one run.

LearnedInversion's DefaultDecoder runs its up-convolutions channels-last, and its last
up-convolution (one output channel for grayscale images) as a GEMM plus an overlap-add (``fold``)
instead of oneDNN's transposed convolution; ``decode`` works in chunks of 256. Same parameters,
same outputs (checked here). Printed: ms per image of the plain decoder (NCHW,
``nn.ConvTranspose2d``, one call on the whole batch) and ours, and their ratio, for batch sizes 1
and 500 and two feature sizes (the 6-layer net's logits and its first hidden layer).

Usage: python benchmarks/learned.py [--reps 20]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from captum_invert._core.learned import DefaultDecoder
from captum_invert.cli import _ms_per_image


def plain_copy(dec: DefaultDecoder) -> nn.Module:
    """The same decoder with NCHW ``nn.ConvTranspose2d`` layers and out-of-place activations."""

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(*[nn.LeakyReLU(0.2) if isinstance(m, nn.LeakyReLU) else m for m in dec.fc])
            ups = []
            for m in dec.up:
                if isinstance(m, nn.ConvTranspose2d):
                    c = nn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
                    c.load_state_dict({k: v.contiguous() for k, v in m.state_dict().items()})
                    ups.append(c)
                else:
                    ups.append(nn.LeakyReLU(0.2))
            self.up = nn.Sequential(*ups)

        def forward(self, f):
            h = self.up(self.fc(f).view(len(f), 64, dec.h0, dec.w0))
            return h[:, :, : dec.input_shape[1], : dec.input_shape[2]]

    return Plain().eval()


def ms_per_image(fn, n, reps):
    with torch.no_grad():
        fn()  # warm-up
        return _ms_per_image(fn, n, reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}")
    print("| features | batch | plain decoder ms/img | ours ms/img | plain/ours |")
    print("|---|---|---|---|---|")
    for d in (10, 512):
        ours = DefaultDecoder(d, (1, 28, 28)).eval()
        plain = plain_copy(ours)
        for n in (1, 500):
            f = torch.randn(n, d)
            with torch.no_grad():
                torch.testing.assert_close(ours(f), plain(f), atol=1e-4, rtol=1e-4)
            chunks = lambda: torch.cat([ours(f[i:i + 256]) for i in range(0, n, 256)])  # noqa: E731
            t_p = ms_per_image(lambda: plain(f), n, args.reps)
            t_o = ms_per_image(chunks, n, args.reps)
            print(f"| {d} | {n} | {t_p:.4f} | {t_o:.4f} | {t_p / t_o:.2f}x |")


if __name__ == "__main__":
    main()
