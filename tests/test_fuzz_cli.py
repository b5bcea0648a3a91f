"""Fuzzing the command line with bad inputs: every user mistake is exit code 2 and one line, never a traceback.

The commands run in-process (``localscore.cli.main``), against files hypothesis writes: layouts, configs and
model files that are broken in the ways issue 18 found (bad UTF-8, deep nesting, huge numbers, wrong types,
missing fields, oversized networks), and flags out of range. Each case must end in one stderr line naming the
problem and the fix, with exit code 2, before any model is built or sampled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localscore.cli import main
from localscore.lengthgen import save_model
from localscore.lengthgen.data import SceneConfig
from localscore.lengthgen.experiments import network_config
from localscore.nn import build_denoiser

sys.path.insert(0, str(Path(__file__).parent))
from test_lengthgen_experiments import tiny_experiment

CASES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
"""25 examples per property; capsys is read (and so reset) by every example, so the fixture check is moot."""


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:   # argparse usage errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _one_clear_line(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning")]
    assert len(lines) == 1, err
    assert lines[0].startswith("localscore"), err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model file (the layout checks run before sampling)."""
    exp = tiny_experiment()
    net = network_config(exp.model, exp.network)
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_model(path, build_denoiser(net), exp.model, net, SceneConfig(resolution=16, counts=(1,)),
               {"experiment": exp.to_dict()})
    return path


_BAD_JSON = st.one_of(
    st.binary(min_size=1, max_size=64).filter(lambda b: not b.strip().startswith(b"{")),     # garbage
    st.integers(2, 40).map(lambda n: b"\xff\xfe" * n),                                        # not UTF-8
    st.integers(2000, 60_000).map(lambda n: b"[" * n + b"]" * n),                             # deep nesting
    st.integers(31, 5000).map(lambda n: b'{"size": ' + b"9" * n + b', "images": [[]]}'),        # huge ints
    st.sampled_from([b'{"size": 1e400, "images": [[]]}', b'{"size": NaN, "images": [[]]}',
                     b'{"size": 16, "images": [[{"pos": [Infinity, 1], "color": "red"}]]}']),
)
_BAD_LAYOUT = st.one_of(
    st.fixed_dictionaries({"size": st.one_of(st.integers(-10**30, 15), st.integers(129, 10**30), st.text(max_size=3),
                                             st.none(), st.floats(allow_nan=False)), "images": st.just([[]])}),
    st.fixed_dictionaries({"size": st.just(16), "images": st.one_of(st.just([]), st.integers(), st.text(max_size=3),
                                                                    st.lists(st.integers(), min_size=1, max_size=3))}),
    st.fixed_dictionaries({"size": st.just(16), "images": st.lists(st.lists(st.fixed_dictionaries({
        "pos": st.one_of(st.lists(st.one_of(st.integers(-10**29, 10**29), st.floats(-1e30, 1e30), st.text(max_size=2)),
                                  max_size=3), st.text(max_size=3)),
        "color": st.one_of(st.sampled_from(["pink", "", "RED ", "reddish"]), st.integers()),
    }), min_size=1, max_size=3), min_size=1, max_size=3)}).filter(lambda d: not _valid_pos(d)),
)


def _valid_pos(d: dict) -> bool:
    """Whether every object of a generated layout is valid (those are not bad inputs)."""
    for img in d["images"]:
        for o in img:
            p, c = o["pos"], o["color"]
            if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and 0 <= v <= 15 for v in p)
                    and isinstance(c, str) and c.strip().lower() in ("red",)):
                return False
    return True


@CASES
@given(data=_BAD_JSON)
def test_unreadable_layout_files_are_one_line(data: bytes, model_file: Path, tmp_path_factory: pytest.TempPathFactory,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path_factory.mktemp("bad")
    (d / "l.json").write_bytes(data)
    code, err = _run(["sample", "--checkpoint", str(model_file), "--layout", str(d / "l.json"), "--out",
                      str(d / "o.npz"), "--steps", "1", "--no-progress"], capsys)
    _one_clear_line(code, err)
    assert not (d / "o.npz").exists()


@CASES
@given(layout=_BAD_LAYOUT)
def test_bad_layouts_are_one_line(layout: dict, model_file: Path, tmp_path_factory: pytest.TempPathFactory,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path_factory.mktemp("bad")
    (d / "l.json").write_text(json.dumps(layout))
    code, err = _run(["sample", "--checkpoint", str(model_file), "--layout", str(d / "l.json"), "--out",
                      str(d / "o.npz"), "--steps", "1", "--no-progress"], capsys)
    _one_clear_line(code, err)


@CASES
@given(data=st.one_of(_BAD_JSON, st.sampled_from([b"[]", b"3", b'"x"', b'{"experiments": []}', b'{"name": 3}',
                                                  b'{"defaults": 1, "experiments": [{}]}'])))
def test_unreadable_train_configs_are_one_line(data: bytes, tmp_path_factory: pytest.TempPathFactory,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path_factory.mktemp("cfg")
    (d / "c.json").write_bytes(data)
    code, err = _run(["train", str(d / "c.json"), "--out", str(d / "runs"), "--no-progress"], capsys)
    _one_clear_line(code, err)
    assert not (d / "runs").exists() or not any((d / "runs").rglob("*.pt"))


@CASES
@given(field=st.sampled_from(["width", "depth", "token_dim", "heads", "kernel_size", "channels"]),
       value=st.integers(10**4, 10**12))
def test_oversized_networks_in_configs_fail_fast(field: str, value: int, tmp_path_factory: pytest.TempPathFactory,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path_factory.mktemp("cfg")
    exp = tiny_experiment().to_dict()
    exp["network"][field] = value
    (d / "c.json").write_text(json.dumps(exp))
    code, err = _run(["train", str(d / "c.json"), "--out", str(d / "runs"), "--no-progress"], capsys)
    _one_clear_line(code, err)
    assert "over the limit" in err and field in err


def _model_variant(path: Path, dest: Path, change: object) -> Path:
    from localscore._io import load_payload, save_payload

    payload = load_payload(path, kind="localscore-model", version=1, where="test")
    change(payload)  # type: ignore[operator]
    save_payload(dest, payload, kind="localscore-model", version=1)   # a valid digest: the loader must check
    return dest


_MODEL_DAMAGE = {
    "no network": lambda p: p.pop("network"),
    "no weights": lambda p: p.pop("weights"),
    "weights a list": lambda p: p.update(weights=[1, 2]),
    "weights of strings": lambda p: p.update(weights={"a": "b"}),
    "network a list": lambda p: p.update(network=[]),
    "scene a number": lambda p: p.update(scene=3),
    "meta a list": lambda p: p.update(meta=[]),
    "kind unknown": lambda p: p.update(kind="transformer"),
    "width 200000": lambda p: p["network"].update(width=200000),
    "depth 10**7": lambda p: p["network"].update(depth=10**7),
    "unknown network field": lambda p: p["network"].update(colour=1),
    "enforce_radius a string": lambda p: p.update(enforce_radius="far"),
}


@pytest.mark.parametrize("damage", sorted(_MODEL_DAMAGE))
def test_damaged_model_files_are_one_line(damage: str, model_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = _model_variant(model_file, tmp_path / "bad.pt", _MODEL_DAMAGE[damage])
    (tmp_path / "l.json").write_text(json.dumps({"size": 16, "images": [[{"pos": [4, 5], "color": "red"}]]}))
    code, err = _run(["sample", "--checkpoint", str(bad), "--layout", str(tmp_path / "l.json"), "--out",
                      str(tmp_path / "o.npz"), "--steps", "1", "--no-progress"], capsys)
    _one_clear_line(code, err)


def test_broken_experiment_json_of_a_run_folder_is_one_line(model_file: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    from localscore.train import TrainConfig, Trainer

    exp = tiny_experiment()
    net = build_denoiser(network_config(exp.model, exp.network))
    Trainer(net, iter([]), TrainConfig(steps=1, progress=False), out_dir=run).save_checkpoint()
    for text in ("{broken", "[]", '{"experiment": 3}', '{"experiment": {"name": "x", "model": "rnn"}}',
                 "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")):
        (run / "experiment.json").write_text(text)
        code, err = _run(["evaluate", "--checkpoint", str(run), "--steps", "1", "--counts", "1", "--per-count", "1",
                          "--no-progress"], capsys)
        _one_clear_line(code, err)


@CASES
@given(argv=st.one_of(
    st.tuples(st.just("--steps"), st.integers(10_001, 10**30).map(str)),
    st.tuples(st.just("--steps"), st.integers(-10**9, 0).map(str)),
    st.tuples(st.just("--seed"), st.one_of(st.integers(2**63, 2**200), st.integers(-10**20, -1)).map(str)),
    st.tuples(st.just("--batch-size"), st.integers(4097, 10**20).map(str)),
    st.tuples(st.just("--max-objects"), st.integers(101, 10**20).map(str)),
    st.tuples(st.sampled_from(["--steps", "--seed", "--batch-size", "--crop", "--mask-radius"]),
              st.sampled_from(["x", "1e400", "nan", "inf", "9" * 5000, "", "1.5.2", "-0x10"])),
))
def test_out_of_range_sample_flags_are_one_line(argv: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path_factory.mktemp("flags")
    code, err = _run(["sample", "--checkpoint", "local-32", "--layout", str(d / "l.json"), "--out", str(d / "o.npz"),
                      *argv], capsys)
    _one_clear_line(code, err)
    assert argv[0] in err


@CASES
@given(argv=st.one_of(
    st.tuples(st.just("--count"), st.integers(101, 10**30).map(str)),
    st.tuples(st.just("--images"), st.integers(1001, 10**30).map(str)),
    st.tuples(st.just("--sigmas"), st.sampled_from(["0", "-1", "nan", "inf", "1e400", "1e7"])),
))
def test_out_of_range_locality_flags_are_one_line(argv: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["locality", "--checkpoint", "local-32", *argv], capsys)
    _one_clear_line(code, err)


@CASES
@given(counts=st.one_of(st.integers(101, 10**30).map(lambda n: f"0..{n}"), st.integers(101, 10**30).map(str),
                        st.sampled_from(["", "..", "1..", "a,b", "-1", "5..1", "1" * 3000])),
       per_count=st.one_of(st.none(), st.integers(100_001, 10**30)))
def test_out_of_range_evaluate_flags_are_one_line(counts: str, per_count: int | None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "--checkpoint", "local-32", f"--counts={counts}"]
    if per_count is not None:
        argv += ["--per-count", str(per_count)]
    code, err = _run(argv, capsys)
    _one_clear_line(code, err)


def test_out_naming_a_folder_and_an_existing_file(model_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "l.json").write_text(json.dumps({"size": 16, "images": [[]]}))
    (tmp_path / "dir.npz").mkdir()
    base = ["sample", "--checkpoint", str(model_file), "--layout", str(tmp_path / "l.json"), "--steps", "1",
            "--no-progress", "--out"]
    _one_clear_line(*_run([*base, str(tmp_path / "dir.npz")], capsys))
    (tmp_path / "done.npz").write_bytes(b"keep")
    code, err = _run([*base, str(tmp_path / "done.npz")], capsys)
    _one_clear_line(code, err)
    assert "--overwrite" in err and (tmp_path / "done.npz").read_bytes() == b"keep"
    _one_clear_line(*_run(["sample", "--checkpoint", str(model_file), "--layout", str(tmp_path), "--out",
                           str(tmp_path / "x.npz")], capsys))                  # the layout is a folder


def test_out_of_memory_and_bugs_are_one_line_with_exit_1_and_debug_shows_the_traceback(
        model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import localscore.lengthgen as lg

    (tmp_path / "l.json").write_text(json.dumps({"size": 16, "images": [[]]}))
    argv = ["sample", "--checkpoint", str(model_file), "--layout", str(tmp_path / "l.json"), "--out",
            str(tmp_path / "o.npz"), "--steps", "1", "--no-progress"]
    for exc in (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError(),
                torch.OutOfMemoryError("out of memory")):
        def boom(*a: object, _e: BaseException = exc, **k: object) -> object:
            raise _e
        monkeypatch.setattr(lg, "sampler", boom)
        code, err = _run(argv, capsys)
        assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "out of memory" in err and "--batch-size" in err
    monkeypatch.setattr(lg, "sampler", lambda *a, **k: 1 / 0)
    code, err = _run(argv, capsys)
    assert code == 1 and "internal error (ZeroDivisionError" in err and "--debug" in err
    assert len(err.strip().splitlines()) == 1
    code, err = _run(["--debug", *argv], capsys)
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err
    code, err = _run([*argv, "--debug"], capsys)
    assert code == 1 and "Traceback" in err
