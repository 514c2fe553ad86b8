"""PyTorch twin of the ACT-style policy in toprl-policies (src/act.rs, src/nets.rs) for a CPU
training-throughput comparison with `cargo run --release -p toprl-policies --example bench_act`.

Same sizes: 1 camera 128x128, CNN 3x3/2 convs [16, 32, 64] + ReLU, adaptive avg-pool to 4x4, 1x1
projection to d_model 128, learned token embeddings, state token, pre-norm transformer encoder (2
layers, 4 heads, d_ff 512, GELU) and decoder (1 layer) over 20 learned queries, linear head, L1 loss,
AdamW (weight decay 1e-4) with gradient-norm clipping at 1.0, dropout 0.

usage: /work/venv-ref/bin/python policies/bench/act_torch.py [--batch 16] [--steps 20] [--threads 2]
"""

import argparse
import time

import torch
from torch import nn


class Act(nn.Module):
    def __init__(self, state=6, action=6, chunk=20, cams=1, d=128, heads=4, ff=512, enc=2, dec=1,
                 channels=(16, 32, 64), grid=4):
        super().__init__()
        convs, c_in = [], 3
        for c in channels:
            convs += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.cnn = nn.Sequential(*convs, nn.AdaptiveAvgPool2d(grid), nn.Conv2d(c_in, d, 1))
        self.pos = nn.Parameter(torch.randn(cams * grid * grid, d) * 0.02)
        self.state_proj = nn.Linear(state, d)
        self.state_pos = nn.Parameter(torch.randn(1, d) * 0.02)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True), enc, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True), dec)
        self.queries = nn.Parameter(torch.randn(chunk, d) * 0.02)
        self.head = nn.Linear(d, action)
        self.cams = cams

    def forward(self, states, images):
        n = states.shape[0]
        x = self.cnn(images)  # [n*c, d, g, g]
        d = x.shape[1]
        x = x.reshape(n, self.cams, d, -1).transpose(2, 3).reshape(n, -1, d) + self.pos
        st = (self.state_proj(states) + self.state_pos).unsqueeze(1)
        memory = self.encoder(torch.cat([st, x], 1))
        out = self.decoder(self.queries.unsqueeze(0).expand(n, -1, -1), memory)
        return self.head(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Act()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, eps=1e-5)
    states = torch.rand(a.batch, 6)
    images = torch.rand(a.batch, 3, 128, 128) * 2 - 1
    actions = torch.rand(a.batch, 20, 6)

    def step():
        opt.zero_grad()
        loss = (model(states, images) - actions).abs().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    secs = time.perf_counter() - t
    print(f"torch {torch.__version__} act: batch {a.batch} image 128x128x1 chunk 20 steps {a.steps} "
          f"threads {a.threads}: {a.batch * a.steps / secs:.1f} samples/s "
          f"({1e3 * secs / a.steps:.1f} ms/step, last loss {loss:.4f})")


if __name__ == "__main__":
    main()
