"""Training: loss goes down for every detector, bit-exact resume (mid-epoch too), atomic checkpoints, SIGTERM,
torchrun DDP on CPU, logs, and the `necklace train` / `necklace eval` commands."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from necklace.cli import main
from necklace.detection import to_coco
from necklace.detection.checkpoint import load_checkpoint
from necklace.detection.train import (
    CHECKPOINT_NAME,
    TrainConfig,
    TrainingInterrupted,
    build_dataset,
    train,
)

#: Faster R-CNN settings that keep a CPU step short.
SMALL_FRCNN = {
    "representation_size": 32,
    "rpn_batch_size_per_image": 32,
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 50,
}
DETECTOR_OPTIONS = {"fcos": {"head_convs": 1}, "retinanet": {}, "faster_rcnn": SMALL_FRCNN}
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.train  # every test here trains a detector (config round trips: test_train_config.py)


def tiny(output: Path, kind: str = "fcos", **changes: object) -> TrainConfig:
    """A config whose steps take tens of milliseconds on one CPU thread."""
    base: dict = {
        "detector": kind,
        "backbone_options": {"width": 4},
        "neck_options": {"width": 16},
        "detector_options": DETECTOR_OPTIONS[kind],
        "data_options": {"num_images": 8, "val_images": 2},
        "image_size": 64,
        "batch_size": 2,
        "steps": 4,
        "output": str(output),
        "tensorboard": False,
        "checkpoint_every": 0,
    }
    base.update(changes)
    return TrainConfig(**base)


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("WORLD_SIZE", None)
    return env


# ------------------------------------------------------------------------------------------------ loss goes down
@pytest.mark.parametrize(
    "kind,neck,lr",
    [
        ("fcos", "fpn", 0.01),
        ("fcos", "pafpn", 0.01),
        ("retinanet", "fpn", 0.1),
        ("retinanet", "pafpn", 0.1),
        ("faster_rcnn", "fpn", 0.05),
        ("faster_rcnn", "pafpn", 0.05),
    ],
)
def test_a_few_steps_reduce_the_loss(tmp_path: Path, kind: str, neck: str, lr: float) -> None:
    # two images and batch 2: every step sees the same batch, so the loss must fall
    cfg = tiny(tmp_path, kind, neck=neck, lr=lr, image_size=96, steps=8, warmup_steps=1, data_options={"num_images": 2})
    result = train(cfg, progress=False)
    losses = result.losses
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    last = sum(losses[-2:]) / 2
    assert last < 0.97 * losses[0], f"{kind}+{neck}: {[round(v, 3) for v in losses]}"
    assert result.completed and result.checkpoint == tmp_path / CHECKPOINT_NAME


# ------------------------------------------------------------------------------------------------ resume
def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [row[:-1] for row in csv.reader(f)]  # all but the time column


def test_resume_is_bit_exact_mid_epoch_and_at_epoch_end(tmp_path: Path) -> None:
    # faster_rcnn draws from torch's global RNG (RPN / RoI sampling), so its RNG state must be restored too.
    # 8 images, batch 2: 4 steps per epoch; stop mid-epoch at 3, then at the epoch boundary 4, then finish at 6.
    ref = train(tiny(tmp_path / "ref", "faster_rcnn", steps=6, log_every=2), progress=False)
    cfg = tiny(tmp_path / "run", "faster_rcnn", steps=6, log_every=2)
    first = train(cfg, progress=False, stop_at=3)
    assert not first.completed and first.steps == 3
    state = load_checkpoint(first.checkpoint)
    assert (state["step"], state["epoch"], state["batch_in_epoch"], state["complete"]) == (3, 0, 3, False)
    second = train(cfg, resume=True, progress=False, stop_at=4)
    assert load_checkpoint(second.checkpoint)["batch_in_epoch"] == 0
    final = train(cfg, resume=True, progress=False)
    assert final.completed and final.history == ref.history
    a, b = _weights(ref.checkpoint), _weights(final.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a, opt_b = load_checkpoint(ref.checkpoint)["optimizer"], load_checkpoint(final.checkpoint)["optimizer"]
    assert all(
        torch.equal(opt_a["state"][k]["momentum_buffer"], opt_b["state"][k]["momentum_buffer"]) for k in opt_a["state"]
    )
    assert _csv_rows(ref.output / "log.csv") == _csv_rows(final.output / "log.csv")  # rows after a stop are redone


def test_resume_of_a_finished_run_and_checks(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, steps=2)
    done = train(cfg, progress=False)
    again = train(cfg, resume=True, progress=False)  # nothing left to do
    assert again.history == done.history and again.completed
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(cfg, progress=False)
    with pytest.raises(ValueError, match=r"differs in lr: checkpoint None, now 0.5"):
        train(cfg.replace(lr=0.5), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny(tmp_path / "empty"), resume=True, progress=False)
    # run-time settings may change on resume; a longer run continues from the checkpoint
    longer = train(cfg.replace(log_every=1, output=str(tmp_path / "moved")), resume=done.checkpoint, progress=False)
    assert longer.history == done.history


# ------------------------------------------------------------------------------------------------ kill + resume
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM: the run checkpoints the step it is on and exits 143. SIGKILL: nothing runs, the last periodic
    checkpoint (every 5 steps) is what survives, and log rows written after it are redone on resume."""
    out = tmp_path / "run"
    cfg = tiny(out, steps=60, log_every=1, checkpoint_every=5, data_options={"num_images": 6})
    cmd = [sys.executable, "-m", "necklace", "train", "--config", str(cfg.save(tmp_path / "cfg.yaml")), "-q"]
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 8:  # header + 7 steps
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"training ended before it could be signalled: {proc.communicate()}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    state = load_checkpoint(out / CHECKPOINT_NAME)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "interrupted by SIGTERM" in err and "necklace train --resume" in err
        assert 7 <= state["step"] < 60
    else:
        assert proc.returncode == -signal.SIGKILL
        assert state["step"] % 5 == 0 and 5 <= state["step"] < 60
    assert not state["complete"] and len(log.read_text().splitlines()) >= state["step"] + 1
    resumed = train(cfg, resume=True, progress=False)
    reference = train(cfg.replace(output=str(tmp_path / "ref")), progress=False)
    assert resumed.steps == 60 and resumed.history == reference.history
    a, b = _weights(resumed.checkpoint), _weights(reference.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _csv_rows(log) == _csv_rows(reference.output / "log.csv")


def test_sigint_in_process_raises_after_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from necklace.detection.train import loop as train_mod

    calls = {"n": 0}
    real = train_mod._to_device

    def interrupting(targets, device):  # the 2nd step's batch triggers a Ctrl-C
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)
        return real(targets, device)

    monkeypatch.setattr(train_mod, "_to_device", interrupting)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the test run was started in the background
    with pytest.raises(TrainingInterrupted) as exc:
        train(tiny(tmp_path, steps=4), progress=False)
    assert exc.value.step == 2 and exc.value.exit_code == 130
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


# ------------------------------------------------------------------------------------------------ torchrun
def test_torchrun_two_processes_gloo_cpu(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "necklace", "train", "--steps", "4", "--batch-size", "2", "--image-size", "64",
        "--backbone-option", "width=4", "--width", "16", "--detector-option", "head_convs=1",
        "--data-option", "num_images=8", "--data-option", "val_images=3", "--log-every", "1",
        "--no-tensorboard", "--eval", "-q", "--output", str(out),
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=180, check=False)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained fcos") == 1 and "on 2 processes" in proc.stdout  # rank 0 prints
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "log.csv", "metrics.json"]
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["world_size"] == 2 and state["step"] == 4 and len(state["rng"]) == 2
    assert state["steps_per_epoch"] == 2  # 8 images / 2 processes / batch 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 3  # predictions of both processes gathered on rank 0
    print(f"torchrun 2 x gloo: {seconds:.1f} s")


# ------------------------------------------------------------------------------------------------ logs
def test_tensorboard_and_csv(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    result = train(tiny(tmp_path, steps=3, log_every=2, tensorboard=True), progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(tmp_path / "log.csv", newline="")))
    assert [r["step"] for r in rows] == ["2", "3"]  # every log_every steps and the last
    assert set(rows[0]) == {"step", "epoch", "lr", "classification", "bbox_regression", "bbox_ctrness", "total", "time"}
    assert float(rows[1]["total"]) == pytest.approx(result.losses[2], abs=1e-5)  # window (2, 3]: step 3 only


def test_without_tqdm_and_tensorboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: plain progress lines instead
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        train(tiny(tmp_path / "a", tensorboard=True), progress=False)
    train(tiny(tmp_path / "b", steps=2, tensorboard=None), progress=True)
    err = capsys.readouterr().err
    assert "tensorboard is not installed" in err and "step 2/2 epoch 0" in err
    assert (tmp_path / "b" / "log.csv").is_file() and not (tmp_path / "b" / "tensorboard").exists()


# ------------------------------------------------------------------------------------------------ CLI
TINY_FLAGS = [
    "--steps", "3", "--batch-size", "2", "--image-size", "64", "--backbone-option", "width=4", "--width", "16",
    "--detector-option", "head_convs=1", "--data-option", "num_images=4", "--data-option", "val_images=2",
    "--no-tensorboard", "-q",
]  # fmt: skip


def test_cli_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--output", str(out), "--eval", "--eval-backend", "pycocotools"]) == 0
    text = capsys.readouterr().out
    assert "trained fcos + fpn (tiny) for 3 steps" in text and "AP @[IoU=0.50:0.95 | area=all" in text
    assert TrainConfig.load(out / "config.yaml").steps == 3
    assert main(["eval", "--checkpoint", str(out / CHECKPOINT_NAME), "--format", "json", "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_images"] == 2 and metrics["backend"] == "faster_coco_eval"
    assert metrics["ap"] == json.loads((out / "metrics.json").read_text())["ap"]  # same model, same data
    # --resume picks the config up from the checkpoint; the run is complete, so it only reports
    assert main(["train", "--resume", "--output", str(out), "-q"]) == 0
    assert "for 3 steps" in capsys.readouterr().out
    # a longer run needs a new directory: steps is part of the run
    assert main(["train", "--resume", "--output", str(out), "--steps", "5", "-q"]) == 2
    assert "differs in steps" in capsys.readouterr().err


def test_cli_coco_data_and_save_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from necklace.detection import SyntheticShapes

    to_coco(SyntheticShapes(4, image_size=(64, 64)), tmp_path / "images", tmp_path / "ann.json")
    data = f"coco:{tmp_path / 'images'},{tmp_path / 'ann.json'}"
    flags = [*TINY_FLAGS[: TINY_FLAGS.index("--data-option")], "--no-tensorboard", "-q"]
    cfg_file = tmp_path / "train.yaml"
    assert main(["train", *flags, "--data", data, "--save-config", str(cfg_file)]) == 0
    cfg = TrainConfig.load(cfg_file)
    assert cfg.data == data and cfg.data_options == {} and cfg.steps == 3
    assert len(build_dataset(cfg, "val")) == 4  # no val_data: the training files
    assert main(["train", "--config", str(cfg_file), "--output", str(tmp_path / "run")]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / CHECKPOINT_NAME), "--data", data, "-q"]) == 0
    assert "4 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--data", "cocoo:a,b"], "did you mean 'coco'"),
        (["train", "--data", "coco:missing_dir,missing.json", "--steps", "1"], "does not exist"),
        (["train", "--resume", "--output", "nowhere"], "nothing to resume"),
        (["train", "--backbone-option", "width"], "write it as key=value"),
        (["eval", "--checkpoint", "missing.pt"], "not found"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_cli_refuses_to_overwrite_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    assert main(["train", *TINY_FLAGS, "--steps", "1", "--output", out]) == 0
    assert main(["train", *TINY_FLAGS, "--steps", "1", "--output", out]) == 2
    assert "already holds a training run" in capsys.readouterr().err
