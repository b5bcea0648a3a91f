"""Trainer: losses against independent formulas, exact resume, atomic and verified checkpoints."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from localscore import Conditions, LocalScoreError
from localscore.denoisers import DiscreteDDPMDenoiser, EDMPreconditioner, EpsilonDenoiser, VDenoiser
from localscore.lengthgen.data import SceneConfig, SceneStream
from localscore.train import (
    CHECKPOINT_NAME,
    LOG_NAME,
    TrainConfig,
    Trainer,
    denoising_loss,
    drop_conditions,
    load_checkpoint,
    loss_weight,
    sample_sigmas,
    train,
)

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_denoiser

REPO = Path(__file__).resolve().parents[1]
SCENES = SceneConfig(resolution=16, counts=(1, 2, 3))


def _cfg(**kw: object) -> TrainConfig:
    base = dict(steps=8, batch_size=8, lr=3e-3, warmup_steps=3, grad_clip=1.0, ema_decay=0.9,
                cond_dropout=0.25, seed=3, log_every=2, checkpoint_every=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.state_dict().values() if p.is_floating_point()])


# ----------------------------------------------------------------------------- losses
def _raw(net_out: float = 0.3):
    return lambda x, s, c: torch.full_like(x, net_out) + 0.1 * x


def test_edm_loss_is_the_raw_network_loss_against_the_effective_target() -> None:
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    sigma = torch.tensor([0.05, 0.4, 1.3, 9.0])
    sd = 0.5
    raw = _raw()
    D = EDMPreconditioner(raw, sigma_data=sd)
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    sv = sigma.view(-1, 1, 1, 1)
    c_skip, c_out = sd**2 / (sv**2 + sd**2), sv * sd / torch.sqrt(sv**2 + sd**2)
    c_in, c_noise = 1 / torch.sqrt(sv**2 + sd**2), torch.log(sigma) / 4
    target = (x0 - c_skip * x) / c_out                  # Karras et al. eq. (8)
    expected = ((raw(c_in * x, c_noise, None) - target) ** 2).mean((1, 2, 3))
    got = denoising_loss(D, x0, sigma, eps, objective="edm", sigma_data=sd, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_epsilon_loss_is_the_noise_prediction_error() -> None:
    torch.manual_seed(1)
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 5.0])
    eps_net = lambda x, s, c: 0.5 * x  # noqa: E731
    D = EpsilonDenoiser(eps_net)
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    eps_hat = eps_net(x / torch.sqrt(sigma.view(-1, 1, 1, 1) ** 2 + 1), sigma, None)
    expected = ((eps_hat - eps) ** 2).mean((1, 2, 3))
    got = denoising_loss(D, x0, sigma, eps, objective="epsilon", reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_v_loss_is_the_velocity_error() -> None:
    torch.manual_seed(2)
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    sigma = torch.tensor([0.2, 1.0, 3.0])
    sd = 0.7
    v_net = lambda x, s, c: torch.tanh(x)  # noqa: E731
    D = VDenoiser(v_net, sigma_data=sd)
    sv = sigma.view(-1, 1, 1, 1)
    x = x0 + sv * eps
    # v-target (Salimans & Ho) in VE variables with data std sd: v = (sd * eps * sigma... ) written as
    # alpha * eps_scaled - beta * x0 with alpha = sd / sqrt(s^2 + sd^2), beta = s / sqrt(s^2 + sd^2) on x/sd.
    a, b = sd / torch.sqrt(sv**2 + sd**2), sv / torch.sqrt(sv**2 + sd**2)
    v_target = a * eps - b * x0 / sd
    v_hat = v_net(x / torch.sqrt(sv**2 + sd**2), sigma, None)
    expected = ((v_hat - v_target) ** 2).mean((1, 2, 3))
    got = denoising_loss(D, x0, sigma, eps, objective="v", sigma_data=sd, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_loss_weight_rejects_unknown_objective() -> None:
    with pytest.raises(LocalScoreError, match="objective"):
        loss_weight(torch.ones(1), "x0")  # type: ignore[arg-type]


def test_sigma_sampling_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(20000, g, p_mean=-0.5, p_std=0.8)
    assert abs(float(s.log().mean()) + 0.5) < 0.03 and abs(float(s.log().std()) - 0.8) < 0.03
    s = sample_sigmas(20000, g, sampling="loguniform", sigma_min=0.01, sigma_max=100.0)
    assert float(s.min()) >= 0.01 and float(s.max()) <= 100.0
    assert abs(float(s.log().mean())) < 0.1          # midpoint of [log 0.01, log 100] is 0
    ac = torch.linspace(0.999, 0.05, 50)
    D = DiscreteDDPMDenoiser(lambda x, t, c: torch.zeros_like(x), ac)
    s = sample_sigmas(500, g, sampling="discrete", model=D)
    table = torch.sqrt((1 - ac) / ac)
    assert bool(torch.isclose(s[:, None], table[None].float(), rtol=1e-5).any(1).all())
    with pytest.raises(LocalScoreError, match="sigmas"):
        sample_sigmas(4, g, sampling="discrete", model=torch.nn.Linear(1, 1))


def test_drop_conditions_empties_the_chosen_sets() -> None:
    c = Conditions.from_lists([[(1, 1), (2, 2)], [(3, 3)], []])
    d = drop_conditions(c, torch.tensor([True, False, True]))
    assert d is not None and d.counts().tolist() == [0, 1, 0]
    assert drop_conditions(None, torch.tensor([True])) is None
    with pytest.raises(LocalScoreError, match="drop"):
        drop_conditions(c, torch.tensor([True]))


def test_train_config_validation() -> None:
    for bad in (dict(steps=0), dict(lr=-1.0), dict(ema_decay=1.0), dict(cond_dropout=1.5),
                dict(objective="x0"), dict(sigma_min=5.0, sigma_max=1.0), dict(betas=(0.9,))):
        with pytest.raises(LocalScoreError):
            TrainConfig(**bad)  # type: ignore[arg-type]
    cfg = _cfg()
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(LocalScoreError, match="unknown keys"):
        TrainConfig.from_dict({"stepz": 3})


# ----------------------------------------------------------------------------- the loop
def test_training_lowers_the_loss_and_ema_lags() -> None:
    cfg = _cfg(steps=40, lr=5e-3, cond_dropout=0.0, log_every=10, checkpoint_every=0)
    t = train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), cfg)
    losses = [r["loss"] for r in t.history]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
    assert not torch.equal(_flat(t.ema_model), _flat(t.model))
    assert all(math.isfinite(r["grad_norm"]) for r in t.history)


def test_warmup_schedule_and_clipping() -> None:
    cfg = _cfg(steps=4, warmup_steps=4, lr=1e-2, grad_clip=1e-3, log_every=1, checkpoint_every=0)
    t = Trainer(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), cfg)
    lrs = []
    for i in range(4):
        lrs.append(t.optimizer.param_groups[0]["lr"])
        before = _flat(t.model)
        t.train_step()
        grads = [p.grad for p in t.model.parameters() if p.grad is not None]
        clipped = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
        assert clipped <= 1e-3 * (1 + 1e-4) < t._pending_norms[-1]   # logged norm is the one before clipping
        if i == 0:   # Adam's first step moves each parameter with a nonzero gradient by exactly lr
            step = (_flat(t.model) - before).abs()
            assert float(step.max()) == pytest.approx(lrs[0], rel=1e-4)
    assert lrs == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])


def test_batch_size_mismatch_is_reported() -> None:
    t = Trainer(tiny_denoiser(0), SceneStream(SCENES, 4, seed=0), _cfg(batch_size=8))
    with pytest.raises(LocalScoreError, match="batch_size"):
        t.train_step()


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    cfg = _cfg(steps=8)
    straight = train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=5), cfg, out_dir=tmp_path / "a")
    train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=5), cfg, out_dir=tmp_path / "b", until=5)
    # a fresh process would rebuild everything: a new model (other init), a new stream, then resume
    resumed = train(tiny_denoiser(123), SceneStream(SCENES, 8, seed=5), cfg, out_dir=tmp_path / "b")
    assert resumed.step == 8
    assert torch.equal(_flat(straight.model), _flat(resumed.model))
    assert torch.equal(_flat(straight.ema_model), _flat(resumed.ema_model))
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)

    def losses(d: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in map(json.loads, (d / LOG_NAME).read_text().splitlines())]

    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) == 4


def test_checkpoint_loads_with_weights_only_and_into_a_model(tmp_path: Path) -> None:
    t = train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), _cfg(steps=3), out_dir=tmp_path)
    raw = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert raw["format"] == "localscore-checkpoint" and raw["payload"]["step"] == 3
    fresh = tiny_denoiser(9)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME, fresh)
    assert state["step"] == 3 and torch.equal(_flat(fresh), _flat(t.ema_model))
    load_checkpoint(tmp_path / CHECKPOINT_NAME, fresh, weights="model")
    assert torch.equal(_flat(fresh), _flat(t.model))
    with pytest.raises(LocalScoreError, match="do not fit"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME, torch.nn.Linear(2, 2))


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "garbage"])
def test_damaged_checkpoints_raise_and_are_never_overwritten(tmp_path: Path, damage: str) -> None:
    cfg = _cfg(steps=6)
    train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), cfg, out_dir=tmp_path, until=3)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        # flip one byte inside a tensor record (the zip's largest stored member lies mid-file)
        i = data.find(b"data/") + 4096
        data = data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]
    elif damage == "foreign":
        torch.save({"hello": torch.zeros(3)}, path)
        data = path.read_bytes()
    else:
        data = b"not a checkpoint at all"
    path.write_bytes(data)
    with pytest.raises(LocalScoreError) as err:
        train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), cfg, out_dir=tmp_path)
    assert "checkpoint" in str(err.value)
    assert path.read_bytes() == data                       # the damaged file was left as it was
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_refuses_another_configuration(tmp_path: Path) -> None:
    train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), _cfg(steps=4), out_dir=tmp_path, until=2)
    with pytest.raises(LocalScoreError, match="lr"):
        train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), _cfg(steps=4, lr=1e-4), out_dir=tmp_path)
    # steps may change: continue to a longer run
    t = train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), _cfg(steps=5), out_dir=tmp_path)
    assert t.step == 5


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = train(tiny_denoiser(0), SceneStream(SCENES, 8, seed=0), _cfg(steps=6), out_dir=tmp_path, until=3)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint()
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_NAME, LOG_NAME])


# ----------------------------------------------------------------------------- a real kill
_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from _tiny import tiny_denoiser
from localscore.lengthgen.data import SceneConfig, SceneStream
from localscore.train import TrainConfig, train
cfg = TrainConfig(steps={steps}, batch_size=8, lr=3e-3, warmup_steps=3, ema_decay=0.9, cond_dropout=0.25,
                  seed=3, log_every=1, checkpoint_every=1, progress=False)
t = train(tiny_denoiser(int(sys.argv[2])), SceneStream(SceneConfig(resolution=16), 8, seed=5), cfg,
          out_dir=sys.argv[1])
torch.save({{k: v for k, v in t.model.state_dict().items()}}, sys.argv[1] + "/final.pt")
"""


def test_sigkill_at_any_moment_then_resume_is_bit_identical(tmp_path: Path) -> None:
    steps = 30
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), steps=steps))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, str(script), str(straight), "0"], check=True, env=env, timeout=240)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:   # kill it mid-run, once a few checkpoints exist
        log = killed / LOG_NAME
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.pt").exists()
    subprocess.run([sys.executable, str(script), str(killed), "1"], check=True, env=env, timeout=240)
    a = torch.load(straight / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = [(r["step"], r["loss"]) for r in map(json.loads, (straight / LOG_NAME).read_text().splitlines())]
    log_b = [(r["step"], r["loss"]) for r in map(json.loads, (killed / LOG_NAME).read_text().splitlines())]
    assert log_a == log_b and len(log_a) == steps


# ----------------------------------------------------------------------------- data parallel
_DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from _tiny import tiny_denoiser
from localscore.lengthgen.data import SceneConfig, SceneStream
from localscore.train import TrainConfig, cleanup_distributed, setup_distributed, train
rank, world, device = setup_distributed()
cfg = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=2, ema_decay=0.9, cond_dropout=0.25,
                  seed=3, log_every=2, checkpoint_every=3, progress=False)
model = tiny_denoiser(rank)   # different init per process: DDP must broadcast process 0's
t = train(model, SceneStream(SceneConfig(resolution=16), 8, seed=5), cfg, out_dir=sys.argv[1], device=device)
if rank == 0:
    torch.save({{"model": t.model.state_dict(), "ema": t.ema_model.state_dict(), "world": world}},
               sys.argv[1] + "/final.pt")
cleanup_distributed()
"""


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env, timeout=240)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path / "two")], check=True, env=env, timeout=240,
                   stdout=subprocess.DEVNULL)
    one = torch.load(tmp_path / "one" / "final.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    assert one["world"] == 1 and two["world"] == 2
    for part in ("model", "ema"):
        for k in one[part]:
            torch.testing.assert_close(two[part][k], one[part][k], rtol=1e-5, atol=1e-6)
    log1 = [json.loads(x)["loss"] for x in (tmp_path / "one" / LOG_NAME).read_text().splitlines()]
    log2 = [json.loads(x)["loss"] for x in (tmp_path / "two" / LOG_NAME).read_text().splitlines()]
    assert log1 == pytest.approx(log2, rel=1e-5)


# ----------------------------------------------------------------------------- reproducible runs, locked folders
def _cli_train(cfg: Path, out: Path, *extra: str, threads: str = "1") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads, "LOCALSCORE_TEST_THREADS": threads}
    code = f"import sys, torch; torch.set_num_threads({threads}); from localscore.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "train", str(cfg), "--out", str(out), "--no-progress", *extra],
                          env=env, capture_output=True, text=True, timeout=240)


def _tiny_config(tmp_path: Path, **train: object) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_lengthgen_experiments import tiny_experiment

    exp = tiny_experiment().to_dict()
    exp["train"].update(train)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(exp))
    return cfg


def test_two_fresh_train_processes_give_bitwise_equal_weights(tmp_path: Path) -> None:
    cfg = _tiny_config(tmp_path, steps=3)
    weights = []
    for name in ("a", "b"):
        r = _cli_train(cfg, tmp_path / name)
        assert r.returncode == 0, r.stderr
        payload = torch.load(tmp_path / name / "tiny" / "seed0" / "model.pt", weights_only=True)["payload"]
        weights.append(payload["weights"])
    a, b = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # bit for bit at one thread


def test_a_second_writer_is_refused_while_the_folder_is_locked(tmp_path: Path) -> None:
    from localscore._io import run_lock

    cfg = _tiny_config(tmp_path)
    run = tmp_path / "runs" / "tiny" / "seed0"
    with run_lock(run, where="test"):          # as if another process trained there now
        (run / ".lock").write_text("4242\n")   # a pid, as run_lock writes it (the flock stays on the inode)
        r = _cli_train(cfg, tmp_path / "runs")  # another process: refused at once, naming the pid
        assert r.returncode == 2, r.stderr
        assert "in use by another localscore process (pid 4242)" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (run / ".lock").exists()        # released and removed
    r = _cli_train(cfg, tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert not (run / ".lock").exists()


def test_run_lock_is_reentrant_and_released_on_error(tmp_path: Path) -> None:
    from localscore._io import run_lock

    with run_lock(tmp_path, where="t"), run_lock(tmp_path, where="t"):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(RuntimeError), run_lock(tmp_path, where="t"):
        raise RuntimeError("boom")
    assert not (tmp_path / ".lock").exists()
    with run_lock(tmp_path, where="t"):
        pass


def test_stale_temp_files_are_removed_at_the_next_start(tmp_path: Path) -> None:
    data = SceneStream(SCENES, 8, seed=5)
    stale = [tmp_path / ".checkpoint.pt.k2j3h4.tmp", tmp_path / ".log.jsonl.abc_12.tmp"]
    tmp_path.mkdir(exist_ok=True)
    for f in stale:
        f.write_bytes(b"x" * 100)
    keep = tmp_path / "notes.tmp"
    keep.write_text("mine")
    train(tiny_denoiser(0), data, _cfg(steps=2), out_dir=tmp_path)
    assert not any(f.exists() for f in stale) and keep.read_text() == "mine"
    assert not (tmp_path / ".lock").exists()


def test_cli_refuses_to_resume_a_run_of_another_config(tmp_path: Path) -> None:
    cfg = _tiny_config(tmp_path, steps=1)
    assert _cli_train(cfg, tmp_path / "runs").returncode == 0
    record = (tmp_path / "runs" / "tiny" / "seed0" / "experiment.json").read_text()
    other = json.loads(cfg.read_text())
    other["scene"]["counts"] = [1, 2, 3]
    cfg.write_text(json.dumps(other))
    r = _cli_train(cfg, tmp_path / "runs")
    assert r.returncode == 2 and "holds a run of another configuration (scene:" in r.stderr, r.stderr
    assert (tmp_path / "runs" / "tiny" / "seed0" / "experiment.json").read_text() == record   # not overwritten
    other["scene"]["counts"] = [1, 2]
    other["train"]["steps"] = 2             # more steps and other test-time settings: the same run, resumed
    other["eval_counts"] = [0, 1, 5]
    cfg.write_text(json.dumps(other))
    assert _cli_train(cfg, tmp_path / "runs").returncode == 0


def test_train_config_sizes_are_bounded() -> None:
    with pytest.raises(LocalScoreError, match=r"batch_size.*over the limit"):
        TrainConfig(batch_size=10**9)
    with pytest.raises(LocalScoreError, match=r"steps.*over the limit"):
        TrainConfig(steps=10**12)
