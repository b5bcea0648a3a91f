"""Host syncs per sampler step, and the sampler's per-step overhead against the same maths written inline.

1. Syncs: every ``.item()``, ``bool(tensor)``, ``float(tensor)``, ``if tensor:`` or ``.tolist()`` reads values
   back to the host; on a GPU each one waits for the device queue to drain. All but ``.tolist()`` dispatch
   ``aten::_local_scalar_dense``, which a ``TorchDispatchMode`` counts; ``.tolist()`` reads the data directly
   (on a GPU through a device-to-host copy) and is counted by a ``TorchFunctionMode``. Each case runs a
   sampler with ``N`` and ``2 N`` steps (grids ending at 0) after one warm-up call (the "1st call" column: a
   composition computes what it keeps between calls then); the per-step count is the difference divided by
   ``N`` (the steady state), the per-call count is what is left (the checks a call makes once, at its
   boundary). Targets: 0 per step for a local network sampled jointly and for a 3-object projective
   composition of it.
2. Overhead: ``sample_euler(EDMPreconditioner(net))`` against the same Euler and EDM maths written as a plain
   loop, on a near-zero-cost network (a 1x1 convolution over a small image) so that what is measured is the
   sampler and adapter machinery (both outputs are checked to be bitwise equal). Both run interleaved,
   repeated; the medians are compared, in CPU time of the calling thread (robust on a shared machine; torch
   runs on that thread with one thread) and in wall time. Target: ratio <= 1.15.

Run:  python benchmarks/syncs.py [--quick] [--threads N] [--steps 20 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _bench import cpu_name
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from localscore import Conditions, LocalConditionalDenoiser
from localscore.compose import masked_from, projective_from
from localscore.denoisers import EDMPreconditioner
from localscore.masks import DiscRule
from localscore.sampling import sample_euler, sample_heun
from localscore.schedules import karras_sigmas

LOCAL_SCALAR = torch.ops.aten._local_scalar_dense.default


class SyncCounter(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` dispatches (one per value read back to the host)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if func is LOCAL_SCALAR:
            self.count += 1
        return func(*args, **(kwargs or {}))


class ToListCounter(TorchFunctionMode):
    """Counts ``Tensor.tolist`` calls (a read-back that does not go through ``_local_scalar_dense``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if func is torch.Tensor.tolist:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_syncs(fn: Callable[[], Any]) -> tuple[int, int]:
    """``(scalar reads, tolist calls)`` made by ``fn()``."""
    with SyncCounter() as scalars, ToListCounter() as lists:
        fn()
    return scalars.count, lists.count


Profile = tuple[float, float, int]  # per step, per call (steady state), first call


def sync_profile(sampler: Any, denoiser: Any, x: Tensor, cond: Conditions | None, n: int
                 ) -> tuple[Profile, Profile]:
    """Syncs of ``sampler`` (scalar reads, tolist calls), each as ``(per step, per call, first call)``: from
    runs of ``n`` and ``2 n`` steps after a warm-up call of ``n`` steps (whose count is the third value)."""
    def run(steps: int) -> tuple[int, int]:
        sig = karras_sigmas(steps, 0.05, 5.0)
        return count_syncs(lambda: sampler(denoiser, x, sig, cond))

    first, c1, c2 = run(n), run(n), run(2 * n)
    out = []
    for k in range(2):
        per_step = (c2[k] - c1[k]) / n
        out.append((per_step, c1[k] - per_step * n, first[k]))
    return out[0], out[1]


def sync_cases(quick: bool) -> None:
    torch.manual_seed(0)
    net = LocalConditionalDenoiser(width=8, depth=1, heads=2, attr_dim=0).eval()
    cond = Conditions.from_lists([[(2.0, 3.0), (8.0, 9.0), (13.0, 4.0)], [(5.0, 5.0), (11.0, 12.0), (3.0, 13.0)]])
    x = 5.0 * torch.randn(2, 3, 16, 16)
    n = 2 if quick else 4
    cases: list[tuple[str, Any, Any, Conditions | None]] = [
        ("(a)  euler, local net sampled jointly", sample_euler, net, cond),
        ("(a') heun,  local net sampled jointly", sample_heun, net, cond),
        ("(b)  euler, projective_from, 3 objects (auto)", sample_euler, projective_from(net, cond), None),
        ("(b') heun,  projective_from, 3 objects (auto)", sample_heun, projective_from(net, cond), None),
        ("     euler, projective_from, 'sequential'", sample_euler,
         projective_from(net, cond, strategy="sequential"), None),
        ("     euler, projective_from, 'batched'", sample_euler, projective_from(net, cond, strategy="batched"), None),
        ("     euler, projective_from, 'crop'", sample_euler, projective_from(net, cond, strategy="crop"), None),
        ("(c)  euler, masked_from, DiscRule(3)", sample_euler, masked_from(net, cond, DiscRule(3.0)), None),
    ]
    print(f"Host syncs per sampler call; B = 2, 3 x 16 x 16, N = {n} and {2 * n} steps (heun's last step makes one "
          "denoiser call, not two)")
    print(f"{'':50s} {'aten::_local_scalar_dense':^29s} {'Tensor.tolist':^29s}")
    print(f"{'case':50s}" + f" {'per step':>9s} {'per call':>9s} {'1st call':>9s}" * 2)
    with torch.no_grad():
        for name, sampler, den, c in cases:
            prof = sync_profile(sampler, den, x, c, n)
            print(f"{name:50s}" + "".join(f" {a:9.2f} {b:9.1f} {f:9d}" for a, b, f in prof))


class Conv1x1(nn.Module):
    """The near-zero-cost network ``F(x_in, c_noise, cond) = conv1x1(x_in)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Conditions | None = None) -> Tensor:
        return self.conv(x)


def inline_euler(net: Conv1x1, x: Tensor, sigmas: Tensor, sigma_data: float) -> Tensor:
    """``sample_euler(EDMPreconditioner(net, sigma_data=sigma_data), x, sigmas)`` written as a plain loop."""
    sd = sigma_data
    ones = x.new_ones(x.shape[0])
    for i in range(sigmas.shape[0] - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        s = sigma * ones
        sv = s.view(-1, 1, 1, 1)
        c_skip = sd**2 / (sv**2 + sd**2)
        c_out = sv * sd / torch.sqrt(sv**2 + sd**2)
        c_in = 1.0 / torch.sqrt(sv**2 + sd**2)
        d = c_skip * x + c_out * net(x * c_in, torch.log(s) / 4)
        x = x + (sigma_next - sigma) * (x - d) / sigma
    return x


def overhead(quick: bool, steps_list: list[int]) -> None:
    torch.manual_seed(0)
    net = Conv1x1(3).eval()
    den = EDMPreconditioner(net, sigma_data=0.5)
    x = 5.0 * torch.randn(1, 3, 8, 8)
    repeats = 15 if quick else 100
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nOverhead: sample_euler(EDMPreconditioner(1x1 conv)) vs the same maths inline; 1 x 3 x 8 x 8, median "
          f"of {repeats} interleaved repeats. CPU time of the calling thread (time.thread_time: robust to other "
          "processes on a shared machine) and wall time (time.perf_counter)")
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; load average {load}")
    print(f"{'steps':>6s} {'library':>12s} {'inline':>12s} {'ratio':>7s} {'wall ratio':>11s}  bitwise equal")
    for steps in steps_list:
        sig = karras_sigmas(steps, 0.05, 5.0)
        with torch.no_grad():
            same = torch.equal(sample_euler(den, x, sig), inline_euler(net, x, sig, 0.5))
            cpu: dict[str, list[float]] = {"lib": [], "ref": []}
            wall: dict[str, list[float]] = {"lib": [], "ref": []}
            for r in range(repeats + 3):  # the first 3 are a warm-up
                for name, run in (("lib", lambda sig=sig: sample_euler(den, x, sig)),
                                  ("ref", lambda sig=sig: inline_euler(net, x, sig, 0.5))):
                    c0, w0 = time.thread_time(), time.perf_counter()
                    run()
                    c1, w1 = time.thread_time(), time.perf_counter()
                    if r >= 3:
                        cpu[name].append((c1 - c0) / steps)
                        wall[name].append((w1 - w0) / steps)
        m = {k: statistics.median(v) for k, v in cpu.items()}
        w = {k: statistics.median(v) for k, v in wall.items()}
        print(f"{steps:6d} {m['lib'] * 1e6:9.1f} us {m['ref'] * 1e6:9.1f} us {m['lib'] / m['ref']:6.2f}x "
              f"{w['lib'] / w['ref']:10.2f}x  {same}")
    print("(target: ratio <= 1.15; per step, so the checks a call makes once weigh less on longer grids)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50], help="grid sizes of the overhead test")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sync_cases(args.quick)
    overhead(args.quick, args.steps)


if __name__ == "__main__":
    main()
