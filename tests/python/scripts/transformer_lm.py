"""A small causal language model on nn.TransformerEncoder (dropout on), trained with AdamW on
random tokens. An ordinary training script: it knows nothing of actmem. Writes the losses, the last
step's gradients and the parameters to --out."""

import math

import torch
from torch import nn

import common


class LanguageModel(nn.Module):
    def __init__(self, vocab=200, width=64, heads=4, layers=4, length=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) / math.sqrt(width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, tokens):
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        h = self.encoder(h, mask=self.mask, is_causal=True)
        return self.head(h)


def main():
    args = common.options(__doc__.splitlines()[0], batch=16)
    torch.manual_seed(0)
    model = LanguageModel().to(args.device)
    common.checkpointed(model.encoder.layers, args.torch_mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clock = common.StepClock(args.device)
    losses = []
    with common.steps_context(args.torch_mode, args.device):
        for _ in range(args.steps):
            tokens = torch.randint(0, 200, (args.batch, 33)).to(args.device)
            with clock:
                optimizer.zero_grad()
                logits = model(tokens[:, :-1])
                loss = nn.functional.cross_entropy(logits.reshape(-1, 200),
                                                   tokens[:, 1:].reshape(-1))
                loss.backward()
                optimizer.step()
            losses.append(loss.detach())
    common.save(args.out, losses, model, clock, buffers=False)


if __name__ == "__main__":
    main()
