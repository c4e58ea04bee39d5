"""Probe which torch.library registration route works here: eager, torch.compile(fullgraph),
and (on CPU) Triton's interpreter. Prints one line per (route, mode).

Routes:
  custom_op  -- torch.library.custom_op + register_fake + register_autograd; the op body
                launches a Triton kernel (opaque to Inductor). tritonbasis uses this route.
  triton_op  -- torch.library.triton_op + wrap_triton (torch >= 2.6): Inductor can see the
                Triton kernel and fuse around it.

Run it as a separate process: on CPU set TRITON_INTERPRET=1 first.
    TRITON_INTERPRET=1 python tools/probe_registration.py     # CPU
    python tools/probe_registration.py                         # GPU
"""

import os
import traceback

import torch
import triton
import triton.language as tl


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) * 2.0, mask=m)


def _launch(x):
    y = torch.empty_like(x)
    _scale_kernel[(triton.cdiv(x.numel(), 64),)](x, y, x.numel(), BLOCK=64)
    return y


@torch.library.custom_op("tbprobe::scale_custom", mutates_args=())
def scale_custom(x: torch.Tensor) -> torch.Tensor:
    return _launch(x)


@scale_custom.register_fake
def _(x):
    return torch.empty_like(x)


scale_custom.register_autograd(lambda ctx, g: g * 2.0)

routes = {"custom_op": torch.ops.tbprobe.scale_custom}

if hasattr(torch.library, "triton_op"):
    from torch.library import triton_op, wrap_triton

    @triton_op("tbprobe::scale_triton", mutates_args=())
    def scale_triton(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        wrap_triton(_scale_kernel)[(triton.cdiv(x.numel(), 64),)](x, y, x.numel(), BLOCK=64)
        return y

    scale_triton.register_autograd(lambda ctx, g: g * 2.0)
    routes["triton_op"] = torch.ops.tbprobe.scale_triton


def main():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"torch {torch.__version__}, triton {triton.__version__}, device {dev}, "
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}"
    )
    for name, op in routes.items():
        for mode in ("eager", "compile"):
            torch._dynamo.reset()
            x = torch.randn(100, device=dev, requires_grad=True)
            f = (
                (lambda t, op=op: op(t).sum())
                if mode == "eager"
                else torch.compile(lambda t, op=op: op(t).sum(), fullgraph=True)
            )
            try:
                out = f(x)
                out.backward()
                ok = torch.allclose(out, (x * 2).sum()) and torch.allclose(
                    x.grad, torch.full_like(x, 2.0)
                )
                print(f"{name:10s} {mode:8s} {'OK' if ok else 'WRONG RESULT'}")
            except Exception as e:
                print(f"{name:10s} {mode:8s} FAIL {type(e).__name__}: {str(e).splitlines()[0]}")
                if os.environ.get("PROBE_VERBOSE"):
                    traceback.print_exc()


if __name__ == "__main__":
    main()
