"""Run configurations: parsing errors, building models and data, run_training with exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from localscore import LocalScoreError
from localscore.lengthgen import RunConfig, run_training
from localscore.lengthgen.data import DatasetStream, SceneConfig, SceneStream, write_dataset
from localscore.nn import GlobalConditionalDenoiser, LocalConditionalDenoiser

LOCAL = {"kind": "local", "width": 8, "token_dim": 8, "heads": 2, "sigma_embed_dim": 16, "conditioning": "render"}
GLOBAL = {"kind": "global", "base_width": 8, "channel_mult": [1, 2], "attention_levels": [1], "token_dim": 8,
          "heads": 2, "sigma_embed_dim": 16, "groups": 4}


def _config(**over: object) -> dict:
    d = {"name": "t", "model": dict(LOCAL), "scenes": {"resolution": 16, "counts": [1, 2]},
         "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "progress": False},
         "data": {"seed": 3}}
    d.update(over)
    return d


def test_build_model_and_data(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(_config())
    assert isinstance(cfg.build_model(), LocalConditionalDenoiser)
    assert isinstance(cfg.build_data(), SceneStream)
    g = RunConfig.from_dict(_config(model=dict(GLOBAL)))
    model = g.build_model()
    assert isinstance(model, GlobalConditionalDenoiser)
    batch = next(g.build_data())
    assert model(batch.images, torch.ones(4), batch.cond).shape == (4, 3, 16, 16)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    write_dataset(tmp_path / "d.pt", SceneConfig(resolution=16), 8)
    (tmp_path / "run.json").write_text(json.dumps(_config(data={"seed": 1, "dataset": "d.pt"})))
    from_file = RunConfig.from_file(tmp_path / "run.json")
    assert isinstance(from_file.build_data(), DatasetStream)


@pytest.mark.parametrize("change, message", [
    ({"model": {"kind": "mlp"}}, "model 'kind'"),
    ({"model": {**LOCAL, "attr_dim": 4}}, "attr_dim"),
    ({"model": {**LOCAL, "widht": 3}}, "unknown keys"),
    ({"scenes": {"resolution": 300}}, "resolution"),
    ({"train": {"steps": 0}}, "steps"),
    ({"data": {"seed": -1}}, "seed"),
    ({"extra": 1}, "unknown keys"),
    ({"model": "local"}, "'model'"),
])
def test_bad_run_configurations_are_reported(change: dict, message: str) -> None:
    with pytest.raises(LocalScoreError, match=message):
        RunConfig.from_dict(_config(**change))


def test_bad_json_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"model": ')
    with pytest.raises(LocalScoreError, match="not valid JSON"):
        RunConfig.from_file(tmp_path / "bad.json")


def test_run_training_resumes_exactly_and_guards_its_directory(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(_config())
    a = run_training(cfg, tmp_path / "a")
    run_training(cfg, tmp_path / "b", until=3)
    b = run_training(cfg, tmp_path / "b")
    assert b.step == 6
    # the model's initialisation is seeded, so training again from scratch would also match `a` below:
    # check that this call continued from step 3 (log_every = 1: one record per step it ran)
    assert [r["step"] for r in b.history] == [4, 5, 6]
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert json.loads((tmp_path / "a" / "run.json").read_text()) == cfg.to_dict()
    other = RunConfig.from_dict(_config(scenes={"resolution": 16, "counts": [3]}))
    with pytest.raises(LocalScoreError, match="another configuration"):
        run_training(other, tmp_path / "a")
