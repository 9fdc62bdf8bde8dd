"""Output head, logit soft-cap and cross-entropy in one chunked pass, gradients included.

Used by the model's loss path: the ``[N, V]`` logits are never materialised.
"""

from __future__ import annotations

import torch

from gristmill.formats.vocab import IGNORE_INDEX


class _HeadLoss(torch.autograd.Function):
    """Output head, soft-cap and cross-entropy in one pass over row chunks, gradients included.

    The plain path materialises [N,V] logits and walks them a dozen times (matmul, divide, tanh,
    multiply, log-softmax, gather, and the backward of each, plus a zero-filled gradient), so on a CPU
    the head costs more than the transformer below it. Here each chunk of rows is small enough to stay
    in cache: its logits, loss and logit gradient are computed together, then folded into the gradients
    of x and the weight at once. The [N,V] tensor never exists; backward only scales what forward kept.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                chunk: int, grad_enabled: bool) -> torch.Tensor:
        # x [N,C], weight [V,C], targets [N] (IGNORE_INDEX = no loss); returns the mean loss over targets.
        # needs_input_grad only looks at requires_grad, which parameters keep under torch.no_grad, so the
        # caller's grad mode (off inside forward) comes in as grad_enabled: evaluation skips the gradients.
        want_x, want_w = (grad_enabled and ctx.needs_input_grad[i] for i in (0, 1))
        valid = targets != IGNORE_INDEX
        scale = 1.0 / valid.sum().clamp_min(1).float()
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        for s in range(0, x.size(0), chunk):
            xc, vc = x[s:s + chunk], valid[s:s + chunk]
            tc = targets[s:s + chunk].clamp_min(0)[:, None]  # [R,1]; ignored rows are masked below
            z = (xc @ weight.t()).float()  # [R,V]
            if softcap:
                t = z.div_(softcap).tanh_()  # z now holds tanh(logits / cap)
                z = t * softcap
            lse = torch.logsumexp(z, dim=-1)  # [R]
            total += ((lse - z.gather(1, tc)[:, 0]) * vc).sum()
            if not (want_x or want_w):
                continue
            # d loss / d logits = softmax - one_hot, per valid row, times d capped / d raw = 1 - tanh^2
            g = z.sub_(lse[:, None]).exp_()
            g.scatter_add_(1, tc, torch.full_like(g[:, :1], -1.0))
            g.mul_((vc * scale)[:, None])
            if softcap:
                g.mul_(t.square_().neg_().add_(1.0))
            g = g.to(x.dtype)
            if want_x:
                grad_x[s:s + chunk] = g @ weight
            if want_w:
                grad_w += g.t() @ xc
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x, grad_w = ctx.saved_tensors
        gx = grad_x * grad_out if grad_x is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gx, gw, None, None, None, None


LARGE_VOCAB = 16384
LARGE_VOCAB_ROWS = 256


def head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
              chunk_bytes: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``softcap(x @ weight.T)`` against ``targets`` (-100 = ignored), without
    materialising the logits. x [N,C], weight [V,C], targets [N]. Rows go in chunks of ~``chunk_bytes``
    of float32 logits: by default 1 MiB on a CPU (stays in a core's L2 cache), 256 MiB on a GPU (few,
    large kernels; torch.compile traces the chunk loop unrolled). A large vocabulary (a pretrained model's
    49k tokens) gets at least ``LARGE_VOCAB_ROWS`` rows a chunk: every chunk adds into the whole [V,C]
    weight gradient, so 5-row chunks would spend the step rewriting it."""
    if chunk_bytes is None:
        chunk_bytes = 1 << 20 if x.device.type == "cpu" else 256 << 20
    vocab = weight.size(0)
    chunk = max(1, chunk_bytes // (4 * vocab), LARGE_VOCAB_ROWS if vocab > LARGE_VOCAB else 1)
    return _HeadLoss.apply(x, weight, targets, softcap, chunk, torch.is_grad_enabled())
