"""The machinery the fuzz tests share (not part of the library): the case type, the classifier of one case's
outcome, the forked child with a watchdog and an address-space limit, and the before/after table of
``docs/reliability.md``.

A case is ``(area, name, kind, fn)``: kind ``"bad"`` (``fn`` must raise a LocalScoreError) or ``"ok"`` (``fn``
returns ``(out, reference)``). Under pytest every case runs in-process through :func:`check_case`; run as a
script, a fuzz file calls :func:`cases_main`, which runs every case in a forked child (:func:`run_case`) and
classifies it (clear error, right answer, obscure error, silent NaN, accepted, silently wrong, hang).
"""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
import resource
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from localscore import LocalScoreError

Case = tuple[str, str, str, Callable[[], Any]]
OUTCOMES = ["clear error", "right answer", "obscure error", "silent NaN", "accepted", "silently wrong", "hang"]


def case_adders(cases: list[Case]) -> tuple[Callable[[str, str, Callable[[], Any]], None],
                                            Callable[[str, str, Callable[[], Any]], None]]:
    """``bad(area, name, fn)`` and ``ok(area, name, fn)``, which append a case of that kind to ``cases``."""

    def bad(area: str, name: str, f: Callable[[], Any]) -> None:
        cases.append((area, name, "bad", f))

    def ok(area: str, name: str, f: Callable[[], Any]) -> None:
        cases.append((area, name, "ok", f))

    return bad, ok


def classify(kind: str, f: Callable[[], Any]) -> tuple[str, str]:
    """The outcome of one case, run in this process, and a short detail."""
    try:
        out = f()
    except LocalScoreError as e:
        return ("clear error" if kind == "bad" else "error on legit input", str(e).splitlines()[0][:150])
    except MemoryError as e:
        return ("obscure error", f"MemoryError {e}"[:150])
    except Exception as e:
        return ("obscure error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:150])
    if kind == "ok":
        o, r = out
        if isinstance(o, torch.Tensor):
            if not torch.isfinite(o).all():
                return ("silent NaN", "")
            same = o.shape == r.shape and torch.allclose(o.double(), r.double(), rtol=1e-3, atol=1e-4)
            return (
                "right answer" if same else "silently wrong",
                f"max diff {(o.double() - r.double()).abs().max().item():.2e}" if o.shape == r.shape else "shape",
            )
        return ("right answer" if o == r else "silently wrong", "")
    # bad input accepted
    vals = list(out) if isinstance(out, (tuple, list)) else [out]
    for v in list(vals):
        if hasattr(v, "__dict__") and not isinstance(v, torch.Tensor):
            vals += [a for a in vars(v).values() if isinstance(a, (torch.Tensor, float))]
    for t in vals:
        v = t
        if (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and t.device.type != "meta"
            and not torch.isfinite(t).all()
        ):
            return ("silent NaN", describe_short(out))
        if isinstance(v, float) and not math.isfinite(v):
            return ("silent NaN", describe_short(out))
    return ("accepted", describe_short(out))


def describe_short(o: Any) -> str:
    return (repr(o)[:100]).replace("\n", " ")


def check_case(case: Case, accepted_is_right: bool = False) -> None:
    """The pytest check of one case: a bad case is a clear error, an ok case the right answer (or, with
    ``accepted_is_right``, "accepted": an assertion that passed, whose return value is None)."""
    _, _, kind, f = case
    outcome, detail = classify(kind, f)
    if accepted_is_right and kind == "ok" and outcome == "accepted":
        outcome = "right answer"
    assert outcome == ("clear error" if kind == "bad" else "right answer"), f"{outcome}: {detail}"


def run_case(kind: str, f: Callable[[], Any], timeout: float = 20, memory: int = 6 * 1024**3) -> tuple[str, str]:
    """Classify one case in a forked child with a ``timeout`` s watchdog and a ``memory`` byte address-space
    limit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            torch.set_num_threads(1)
            res = classify(kind, f)
        except BaseException as e:
            res = ("obscure error", f"{type(e).__name__}")
        os.write(w, pickle.dumps(res))
        os._exit(0)
    os.close(w)
    t0 = time.time()
    while True:
        ready, _, _ = select.select([r], [], [], 0.2)
        done, status = os.waitpid(pid, os.WNOHANG)
        if ready or done:
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            if not done:
                os.waitpid(pid, 0)
            os.close(r)
            return pickle.loads(data) if data else ("obscure error", f"child died (status {status})")
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return ("hang", f">{timeout}s")


def table(before: list[dict[str, str]], after: list[dict[str, str]]) -> str:
    """The markdown table of docs/reliability.md: outcomes per area, before and after."""
    areas = list(dict.fromkeys(r["area"] for r in before))
    head = " / ".join(["clear", "right", "obscure", "silent NaN/inf", "accepted", "wrong", "hang"])
    lines = [f"| area | cases | before: {head} | after: {head} |", "|---|---|---|---|"]
    for area in [*areas, None]:
        cb = collections.Counter(r["outcome"] for r in before if area is None or r["area"] == area)
        ca = collections.Counter(r["outcome"] for r in after if area is None or r["area"] == area)
        row = [
            area or "**all**",
            str(sum(cb.values())),
            " / ".join(str(cb[o]) for o in OUTCOMES),
            " / ".join(str(ca[o]) for o in OUTCOMES),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cases_main(cases: list[Case], memory: int = 6 * 1024**3) -> None:  # pragma: no cover - docs/reliability.md
    """``python tests/test_fuzz_X.py [results.json]`` classifies ``cases``, each in a forked child under a
    ``memory`` byte limit; ``--table BEFORE AFTER`` prints the table of two such runs."""
    if sys.argv[1:2] == ["--table"]:
        with open(sys.argv[2]) as b, open(sys.argv[3]) as a:
            print(table(json.load(b), json.load(a)))
        return
    results = []
    for area, name, kind, f in cases:
        outcome, detail = run_case(kind, f, memory=memory)
        results.append({"area": area, "case": name, "kind": kind, "outcome": outcome, "detail": detail})
        print(f"{area:10s} | {outcome:14s} | {name} | {detail}", flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(results, fh, indent=1)
