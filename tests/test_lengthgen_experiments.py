"""Experiments: configs, model files, samplers (composition identities), evaluation, locality, the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from localscore import Conditions, LocalScoreError
from localscore.lengthgen import (
    BACKGROUND_MODELS,
    SHIPPED_MODELS,
    ExperimentConfig,
    LoadedModel,
    checkpoint_dir,
    evaluate_model,
    load_experiments,
    load_model,
    locality_profile,
    network_config,
    sampler,
    save_model,
    train_experiment,
)
from localscore.nn import build_denoiser

REPO = Path(__file__).resolve().parents[1]

TINY_LOCAL = {"width": 8, "depth": 1, "token_dim": 8, "heads": 2, "conditioning": "render", "norm": "none",
              "cond_radius": 2.0, "relative_freqs": 2, "sigma_embed_dim": 16}
TINY_UNET = {"base_width": 8, "channel_mult": [1, 2], "attention_levels": [1], "token_dim": 8, "heads": 2,
             "groups": 4, "sigma_embed_dim": 16, "token_encoder_layers": 1, "position_scale": 16.0}


def tiny_experiment(**changes: object) -> ExperimentConfig:
    base: dict[str, object] = {
        "name": "tiny", "model": "local", "network": TINY_LOCAL,
        "scene": {"resolution": 16, "counts": [1, 2], "shapes": ["disc"], "sizes": ["small"]},
        "train": {"steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 1, "cond_dropout": 0.2},
        "sampling_steps": 2, "per_count": 2, "eval_counts": [0, 2], "methods": ["joint"],
    }
    base.update(changes)
    return ExperimentConfig.from_dict(base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExperimentConfig, Path, LoadedModel]:
    exp = tiny_experiment()
    out = tmp_path_factory.mktemp("run")
    model = train_experiment(exp, out, seed=0, progress=False)
    return exp, out, model


# ----------------------------------------------------------------------------- configs
def test_config_roundtrip_and_nested_validation() -> None:
    exp = tiny_experiment()
    assert ExperimentConfig.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
    assert exp.train_config(7).seed == 7
    assert exp.eval_scene_config().counts == (0, 2)
    with pytest.raises(LocalScoreError, match="methods"):
        tiny_experiment(methods=["joint", "magic"])
    with pytest.raises(LocalScoreError, match="unknown keys"):
        ExperimentConfig.from_dict({"name": "x", "netwrok": {}})
    with pytest.raises(LocalScoreError, match="resolution"):  # the nested scene config is checked at once
        tiny_experiment(scene={"resolution": 8})
    with pytest.raises(LocalScoreError, match="width"):
        tiny_experiment(network={"width": 0})
    with pytest.raises(LocalScoreError, match="lr"):
        tiny_experiment(train={"lr": -1.0})
    with pytest.raises(LocalScoreError, match="name"):
        tiny_experiment(name="a b")


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_benchmark_configs_load(mode: str) -> None:
    header, exps = load_experiments(REPO / "benchmarks" / "configs" / f"{mode}.json")
    names = [e.name for e in exps]
    # The experiments: (1) local, (2) token-encoder and plain U-Nets, (3) labelling one,
    # (4) training-time enforce_locality and sampling-time locality on the failing model.
    assert {"local-all", "unet-encoder-all", "unet-plain-all", "local-one", "unet-one",
            "unet-encoder-enforced-all"} <= set(names)
    by = {e.name: e for e in exps}
    assert by["local-one"].scene_config().labelling == "one"
    assert "projective" in by["local-one"].methods and "projective" in by["unet-one"].methods
    assert {"masked", "localized"} <= set(by["unet-encoder-all"].methods)
    assert by["unet-encoder-enforced-all"].enforce_radius is not None
    assert by["unet-encoder-all"].network_config().token_encoder_layers > 0   # type: ignore[union-attr]
    assert all(e.scene_config().counts == (1, 2, 3) for e in exps)
    assert all(e.eval_counts == tuple(range(11)) for e in exps)
    assert header["mode"] == mode
    res = 16 if mode == "quick" else 32
    assert all(e.scene_config().resolution == res for e in exps)
    if mode == "full":
        assert all(len(e.seeds) == 3 for e in exps)


def test_load_experiments_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LocalScoreError, match="not valid JSON"):
        load_experiments(bad)
    bad.write_text(json.dumps({"experiments": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(LocalScoreError, match="two experiments"):
        load_experiments(bad)


# ----------------------------------------------------------------------------- model files
def test_model_file_roundtrip(trained: tuple[ExperimentConfig, Path, LoadedModel], tmp_path: Path) -> None:
    exp, out, model = trained
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    assert model.meta["steps"] == 2
    loaded = load_model(out / "model.pt")
    from_ckpt = load_model(out)            # a run folder
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = Conditions.from_lists([[(4.0, 4.0)], [(9.0, 3.0), (2.0, 12.0)]],
                                 attrs=[[[1.0] + [0.0] * 12], [[0.0, 1.0] + [0.0] * 11] * 2])
    ref = model.denoiser(x, 0.7, cond)
    assert torch.equal(loaded.denoiser(x, 0.7, cond), ref)
    assert torch.equal(from_ckpt.denoiser(x, 0.7, cond), ref)
    assert loaded.scene == exp.scene_config() and loaded.network == exp.network_config()


def test_model_file_errors(trained: tuple[ExperimentConfig, Path, LoadedModel], tmp_path: Path) -> None:
    _, out, _ = trained
    with pytest.raises(LocalScoreError, match="neither a shipped model name"):
        load_model(tmp_path / "nothing.pt")
    data = (out / "model.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(LocalScoreError, match="truncated, corrupt"):
        load_model(broken)
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    with pytest.raises(LocalScoreError, match="not a localscore-model"):
        load_model(other)


def test_enforced_model_roundtrip(tmp_path: Path) -> None:
    exp = tiny_experiment(model="unet", network=TINY_UNET, enforce_radius=2.0)
    m = build_denoiser(exp.network_config(), enforce_radius=2.0).eval()
    assert type(m).__name__ == "LocalityEnforced" and m.report.patched
    save_model(tmp_path / "m.pt", m, "unet", exp.network_config(), exp.scene_config(), enforce_radius=2.0)
    back = load_model(tmp_path / "m.pt")
    x = torch.randn(1, 3, 16, 16)
    cond = Conditions.from_lists([[(3.0, 3.0), (12.0, 12.0)]], attrs=[[[1.0] + [0.0] * 12] * 2])
    with torch.no_grad():   # the same weights; the transformer's no-grad fast path rounds differently
        torch.testing.assert_close(back.denoiser(x, 1.0, cond), m(x, 1.0, cond), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_models(name: str) -> None:
    path = checkpoint_dir() / f"{name}.pt"
    # shipped as package data (pyproject.toml), so in every checkout, sdist and wheel: missing is a failure
    assert path.is_file(), f"{name} is missing from {checkpoint_dir()}"
    assert path.stat().st_size < 4 * 1024**2
    m = load_model(name)
    assert m.resolution == 32 and m.meta["steps"] > 0
    assert m.kind == ("unet" if name == "baseline-32" else "local")
    if name in BACKGROUND_MODELS:   # seed 0 of its experiment in benchmarks/configs/background.json, fully trained
        _, exps = load_experiments(REPO / "benchmarks" / "configs" / "background.json")
        exp = next(e for e in exps if e.name == BACKGROUND_MODELS[name])
        assert m.meta["experiment"]["name"] == exp.name and m.meta["seed"] == 0
        assert m.meta["steps"] == exp.train_config(0).steps and m.scene == exp.scene_config()
    # Loaded with weights_only=True: the file holds nothing but tensors and plain values.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "localscore-model"


# ----------------------------------------------------------------------------- samplers
def _local_model(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    exp = tiny_experiment()
    D = build_denoiser(network_config("local", exp.network)).eval()
    return LoadedModel(D, "local", exp.network_config(), exp.scene_config(), {})


def test_projective_equals_joint_for_far_apart_objects_of_a_local_net() -> None:
    # A local network with conditioner radius R: objects more than 2R apart never influence a common pixel,
    # so the joint pass equals the projective composition of single-object passes (exactly, up to round-off).
    model = _local_model()
    R = model.denoiser.conditioner_radius
    assert R is not None and 2 * R < 15
    attrs = [[[1.0] + [0.0] * 12, [0.0] * 5 + [1.0] + [0.0] * 7]]
    cond = Conditions.from_lists([[(0.0, 0.0), (15.0, 15.0)]], attrs=attrs)
    a = sampler(model, "joint", steps=3)(cond, torch.Generator().manual_seed(1))
    b = sampler(model, "projective", steps=3)(cond, torch.Generator().manual_seed(1))
    assert a.shape == (1, 3, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # not vacuous: the objects change the sample (a model ignoring its conditions would pass the line above)
    none = sampler(model, "joint", steps=3)(cond.drop_all(), torch.Generator().manual_seed(1))
    assert float((a - none).abs().max()) > 1e-3


def test_masked_and_localized_agree_and_differ_from_joint_when_objects_are_close() -> None:
    model = _local_model(1)
    cond = Conditions.from_lists([[(6.0, 6.0), (9.0, 9.0)]], attrs=[[[1.0] + [0.0] * 12, [0.0, 1.0] + [0.0] * 11]])
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    joint = sampler(model, "joint", steps=3)(cond, g())
    masked = sampler(model, "masked", steps=3, mask_radius=3.0)(cond, g())
    localized = sampler(model, "localized", steps=3, mask_radius=3.0)(cond, g())
    torch.testing.assert_close(masked, localized, atol=1e-5, rtol=0)   # two implementations of one formula
    assert (joint - masked).abs().max() > 1e-4                            # the objects interact in the joint pass


def test_sampler_strategy_changes_the_speed_not_the_samples() -> None:
    # The demo samples its compositions with strategy="batched" (one network call per step); the samples agree
    # with the sequential ones (one call per pass) to float round-off, for projective and masked composition.
    model = _local_model(1)
    attrs = [[[1.0] + [0.0] * 12, [0.0, 1.0] + [0.0] * 11]] * 2
    cond = Conditions.from_lists([[(6.0, 6.0), (9.0, 9.0)], [(3.0, 12.0)]], attrs=[attrs[0], attrs[0][:1]])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    calls = {"n": 0}
    forward = model.denoiser.forward

    def counted(*a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        return forward(*a, **k)

    for method in ("projective", "masked"):
        seq = sampler(model, method, steps=3, strategy="sequential")(cond, g())
        model.denoiser.forward = counted  # type: ignore[method-assign]
        try:
            calls["n"] = 0
            bat = sampler(model, method, steps=3, strategy="batched")(cond, g())
        finally:
            del model.denoiser.forward
        torch.testing.assert_close(seq, bat, atol=1e-5, rtol=0)
        assert calls["n"] == 3  # one call per Euler step, the background and both objects stacked in it
    joint = sampler(model, "joint", steps=3)(cond, g())
    assert float((joint - seq).abs().max()) > 1e-4  # not vacuous: the composition differs from the joint pass


def test_sampler_background_replaces_the_empty_set_pass() -> None:
    # One Euler step from sigma_max to 0 returns the composed denoiser's output at x = sigma_max * z, so the
    # sample is clamp((E(x) + sum_j (D(x, c_j) - E(x)) + 1) / 2) with E the background model, computed here.
    model, bg = _local_model(1), _local_model(2)
    attrs = [[1.0] + [0.0] * 12, [0.0, 1.0] + [0.0] * 11]
    cond = Conditions.from_lists([[(4.0, 4.0), (11.0, 11.0)]], attrs=[attrs])
    sigma_max = 80.0
    got = sampler(model, "projective", steps=1, sigma_max=sigma_max, background=bg)(
        cond, torch.Generator().manual_seed(5))
    res = model.resolution
    z = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(5))
    x, s = sigma_max * z, torch.full((1,), sigma_max)
    with torch.no_grad():
        e = bg.denoiser(x, s, cond.drop_all())
        d = e + sum(model.denoiser(x, s, c) - e for c in cond.singletons())
    torch.testing.assert_close(got, ((d + 1) / 2).clamp(0, 1), atol=1e-4, rtol=0)   # float32 sums in another order
    own = sampler(model, "projective", steps=1, sigma_max=sigma_max)(cond, torch.Generator().manual_seed(5))
    assert float((own - got).abs().max()) > 1e-3          # not vacuous: the model's own empty set differs
    same = sampler(model, "projective", steps=1, sigma_max=sigma_max, background=model)(
        cond, torch.Generator().manual_seed(5))
    assert torch.equal(same, own)
    masked = sampler(model, "masked", steps=1, sigma_max=sigma_max, background=bg)(
        cond, torch.Generator().manual_seed(5))
    assert masked.shape == got.shape
    with pytest.raises(LocalScoreError, match="no background"):
        sampler(model, "joint", background=bg)
    with pytest.raises(LocalScoreError, match="background"):
        sampler(model, "projective", background="empty")  # type: ignore[arg-type]


def test_sampler_bad_input() -> None:
    model = _local_model()
    with pytest.raises(LocalScoreError, match="method"):
        sampler(model, "magic")
    with pytest.raises(LocalScoreError, match="solver"):
        sampler(model, "joint", solver="rk4")
    with pytest.raises(LocalScoreError, match="strategy"):
        sampler(model, "projective", strategy="fast")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- evaluation and locality
def test_evaluate_model_counts_and_images(trained: tuple[ExperimentConfig, Path, LoadedModel]) -> None:
    _, _, model = trained
    keep: list[torch.Tensor] = []
    res = evaluate_model(model, "joint", counts=[0, 2], per_count=2, steps=2, keep_images=keep, seed=3)
    assert [r.count for r in res.rows] == [0, 2] and all(r.images == 2 for r in res.rows)
    imgs = torch.cat(keep)
    assert imgs.shape == (4, 3, 16, 16) and 0 <= float(imgs.min()) and float(imgs.max()) <= 1
    assert res.meta["method"] == "joint" and res.meta["seed"] == 3


def test_locality_profile_local_net_is_exactly_local() -> None:
    # The local net's output depends on conditioner k only within its declared conditioner radius (Chebyshev),
    # so all of each object's ablation influence lies within that radius: index 1, nothing beyond.
    model = _local_model(2)
    R = float(model.denoiser.conditioner_radius)
    prof = locality_profile(model.denoiser, model.scene, sigmas=(0.1, 1.0), count=2, n_images=1, region_radius=R,
                            pixel_rows=4)
    assert prof.index == pytest.approx((1.0, 1.0), abs=1e-9)
    assert len(prof.pixel_radius) == 2 and all(r <= model.denoiser.receptive_radius for r in prof.pixel_radius)
    with pytest.raises(LocalScoreError, match="count"):
        locality_profile(model.denoiser, model.scene, count=1)


def test_sampler_takes_the_image_shape_from_the_model() -> None:
    # channels from the network config, side from the training scenes (a LoadedModel) or `resolution`
    torch.manual_seed(0)
    exp = tiny_experiment(network={**TINY_LOCAL, "channels": 1}, scene={"resolution": 20})
    D = build_denoiser(exp.network_config()).eval()
    model = LoadedModel(D, "local", exp.network_config(), exp.scene_config(), {})
    cond = Conditions.from_lists([[(5.0, 5.0)]], attrs=[[[1.0] + [0.0] * 12]])
    assert sampler(model, steps=2)(cond, torch.Generator().manual_seed(0)).shape == (1, 1, 20, 20)
    assert sampler(D, steps=2, resolution=12)(cond, torch.Generator().manual_seed(0)).shape == (1, 1, 12, 12)
    with pytest.raises(LocalScoreError, match="resolution"):
        sampler(D, steps=2)


# ----------------------------------------------------------------------------- the benchmark script
def test_benchmark_end_to_end_tiny(tmp_path: Path) -> None:
    cfg = {"mode": "test", "description": "tiny",
           "defaults": tiny_experiment().to_dict(),
           "experiments": [{"name": "tiny-local"},
                           {"name": "tiny-unet", "model": "unet", "network": TINY_UNET,
                            "methods": ["joint", "localized"], "crop": 8, "mask_radius": 2.0}]}
    cfg["defaults"].pop("name")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "runs"
    docs = tmp_path / "docs" / "results.md"

    def bench(*args: str) -> str:
        r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "length_generalization.py"), "--config",
                            str(path), *args], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    bench("--out", str(out), "--docs", str(docs), "--locality-images", "1")
    results = json.loads((out / "results.json").read_text())
    keys = [row["key"] for row in results["rows"]]
    assert keys == ["tiny-local / joint", "tiny-unet / joint", "tiny-unet / localized"]
    assert all(row["train_steps"] == [2] for row in results["rows"])
    assert results["reference"]["rows"][0]["perfect"]["rate"] == 1.0   # detector on ground truth, 0 objects
    text = docs.read_text()
    assert "Generated by benchmarks/length_generalization.py" in text and "tiny-unet / localized" in text
    assert (out / "tiny-local" / "seed0" / "locality.json").is_file()

    # The archive keeps the result files only, and the report regenerated from it alone is the same report.
    archive = tmp_path / "archive"
    bench("--out", str(out), "--stage", "archive", "--archive", str(archive))
    kept = sorted(p.name for p in (archive / "tiny-unet" / "seed0").iterdir())
    assert kept == ["eval-joint.json", "eval-localized.json", "experiment.json", "grid-joint.png",
                    "grid-localized.png", "locality.json", "log.jsonl"]
    assert not list(archive.rglob("*.pt"))
    bench("--out", str(archive), "--stage", "report")
    again = json.loads((archive / "results.json").read_text())
    assert again["rows"] == results["rows"] and again["reference"] == results["reference"]
    assert (archive / "results.md").read_text() == (out / "results.md").read_text()
    lines = bench("--out", str(archive), "--stage", "status").splitlines()
    assert lines[1].split() == ["tiny-local", "0", "2/2", "joint", "(2)", "yes"]
    assert lines[2].split()[:5] == ["tiny-unet", "0", "2/2", "joint", "(2),"]
