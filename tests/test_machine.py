"""What a GPU box, a container or a Slurm task changes, decided by pure functions and run here on a CPU with the
properties of machines we do not have (pipeline/compute/machine.py): cores under a quota, workers and threads per rank, the
autocast dtype and its loss scaling, checkpoints that name no device."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.compute import machine
from pipeline.config import Recipe, load_params
from pipeline.training.backbones import create_classifier
from pipeline.training.trainer import Checkpoint, Trainer
from pipeline.views.augment import view_transform
from pipeline.views.device_augment import resolve_augment_on
from pipeline.views.device_views import DeviceViews, ViewRecipe, view_images
from pipeline.views.image_data import Feed, FrameImages

REPO = Path(__file__).resolve().parents[1]


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_docker_quota_of_4_cores_on_a_64_core_node_gives_3_workers_not_63(tmp_path, monkeypatch):
    root = _cgroup(tmp_path, {"cpu.max": "400000 100000\n"})  # docker --cpus=4, inside its cgroup namespace
    (tmp_path / "self").write_text("0::/\n")
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda _: set(range(64)))
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        monkeypatch.delenv(key, raising=False)
    cores = machine.read_cores(tmp_path / "self", root)
    assert cores == 4
    assert machine.loader_workers("auto", "cuda", cores) == 3
    assert machine.main_threads("cuda", cores, 3) == 2
    # Without the quota, what os.cpu_count() gave before: every core of the node.
    (root / "cpu.max").write_text("max 100000\n")
    assert machine.read_cores(tmp_path / "self", root) == 64


def test_the_lowest_quota_above_a_kubernetes_container_wins_and_cgroup_v1_is_read_too(tmp_path):
    root = _cgroup(tmp_path, {"kubepods/pod1/cpu.max": "200000 100000", "kubepods/pod1/ctr/cpu.max": "max 100000",
                              "kubepods/cpu.max": "max 100000"})
    assert machine.cgroup_cpu_limit("0::/kubepods/pod1/ctr\n", root) == 2.0
    v1 = _cgroup(tmp_path / "v1", {"cpu,cpuacct/cpu.cfs_quota_us": "150000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert machine.cgroup_cpu_limit("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n", v1) == 1.5
    assert machine.usable_cores(64, 1.5, None) == 1  # a fraction of a core more would only be throttled
    assert machine.cgroup_cpu_limit("", root) is None and machine.cgroup_cpu_limit("0::/", tmp_path / "none") is None


def test_a_slurm_task_gets_its_cpus_per_task_even_when_slurm_pins_nothing():
    assert machine.slurm_cpus({"SLURM_CPUS_PER_TASK": "6", "SLURM_CPUS_ON_NODE": "32"}) == 6
    assert machine.slurm_cpus({"SLURM_CPUS_ON_NODE": "8"}) == 8
    assert machine.slurm_cpus({}) is None
    assert machine.usable_cores(64, None, 6) == 6 and machine.usable_cores(4, None, 6) == 4


@pytest.mark.parametrize("capability, expected", [((6, 0), "float16"), ((7, 0), "float16"), ((7, 5), "float16"),
                                                  ((8, 0), "bfloat16"), ((8, 9), "bfloat16"), ((9, 0), "bfloat16")])
def test_bf16_only_where_the_gpu_has_it_natively_fp16_with_loss_scaling_elsewhere(capability, expected):
    dtype = machine.autocast_dtype("cuda", capability, amp=True)
    assert dtype == expected
    assert machine.needs_loss_scaling(dtype) == (expected == "float16")
    assert machine.autocast_dtype("cuda", capability, amp=False) is None
    assert machine.autocast_dtype("cpu", None, amp=True) is None


def test_workers_threads_processes_and_pinning_per_rank():
    assert machine.loader_workers("auto", "cpu", 2) == 0 and machine.loader_workers(3, "cpu", 2) == 3
    assert machine.loader_workers("auto", "cuda", 8) == 7 and machine.loader_workers("auto", "cuda", 1) == 1
    assert machine.main_threads("cpu", 2, 0) == 2 and machine.main_threads("cuda", 8, 0) == 8
    assert machine.main_threads("cuda", 1, 1) == 1
    assert machine.fold_processes("auto", 8, under_torchrun=False) == 8
    assert machine.fold_processes("auto", 0, under_torchrun=False) == 1
    assert machine.fold_processes("auto", 8, under_torchrun=True) == 1
    assert machine.fold_processes(2, 0, under_torchrun=False) == 2


def test_more_processes_than_the_gpus_present_are_refused_in_one_line_and_cpu_ranks_are_not():
    # As on the one-GPU H200 box where test_parallel asked for two: refused before torchrun starts two ranks.
    refusal = machine.devices_refusal(2, 1)
    assert refusal == ("params.yaml: finetune.devices: 2 processes asked for, and this machine shows 1 GPU; set it "
                       "to auto (one per GPU) or at most 1")
    assert machine.devices_refusal(8, 4).endswith("shows 4 GPUs; set it to auto (one per GPU) or at most 4")
    assert machine.devices_refusal(2, 2) is None and machine.devices_refusal(1, 8) is None
    assert machine.devices_refusal("auto", 1) is None
    assert machine.devices_refusal(4, 0) is None  # no GPU: CPU ranks over gloo, as many as asked
    assert machine.pin_memory("cuda") and not machine.pin_memory("cpu")
    assert machine.process_group_backend(True) == "nccl" and machine.process_group_backend(False) == "gloo"
    assert machine.ddp_device_ids("cuda", 3) == [3] and machine.ddp_device_ids("cpu", None) is None


def test_on_a_gpu_training_batches_and_test_views_are_both_made_on_the_device():
    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    frames = [np.zeros((2, 24, 32, 3), np.uint8)]
    assert resolve_augment_on("auto", gpu) == "device" and resolve_augment_on("auto", cpu) == "cpu"
    for device in (gpu, cpu):  # a fine-tuned net predicts from views made where its training batches were augmented
        where = resolve_augment_on("auto", device)
        views = view_images(ViewRecipe(where, 16, "bicubic", ("full", "head")), "zoom", frames, np.arange(2), device)
        assert isinstance(views, DeviceViews) == (device.type == "cuda")


def _trainer(precision: str | None, device: str = "cpu", **recipe) -> Trainer:
    defaults = load_params(REPO / "params.yaml").finetune.recipe("net").model_dump()
    recipe = Recipe(**{**defaults, "backbone": "tf_efficientnet_lite0", "image_size": 32, "batch_size": 4, "epochs": 10, **recipe})
    torch.manual_seed(0)
    model = create_classifier(recipe.backbone, 1, 3, 0.5).to(device)
    return Trainer(model, recipe, Feed(torch.device(device), 4, 0, [0.5] * 3, [0.5] * 3, precision), 4)


def _batches(trainer: Trainer):
    frames = np.random.default_rng(0).integers(0, 255, (16, 24, 32, 3), dtype=np.uint8)
    data = trainer.feed.loader(FrameImages([frames], np.arange(16), view_transform("full", 32), 32))
    return data, torch.arange(16) % 3


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # a skipped fp16 step steps no schedule
def test_the_fp16_training_step_with_loss_scaling_runs_here_as_on_a_t4():
    trainer = _trainer("float16")
    assert trainer.scaler is not None  # what capability 7.x gets
    before = [p.detach().clone() for p in trainer.model.parameters()]
    seen_dtypes = []
    trainer.model.conv_stem.register_forward_hook(lambda module, args, out: seen_dtypes.append(out.dtype))
    for _ in range(3):  # the first steps overflow at the initial scale (2**16) and are skipped, as on a GPU
        loss, _ = trainer.train_epoch(*_batches(trainer), "fp16")
    assert np.isfinite(loss) and seen_dtypes and set(seen_dtypes) == {torch.float16}
    assert trainer.scaler.get_scale() < 2.0**16  # it backed off from overflowing gradients instead of applying them
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert "scaler" in trainer.state_dict()  # a resumed fp16 run keeps its loss scale
    assert _trainer(None).scaler is None  # float32 and bf16 need none


def test_label_smoothing_of_the_recipe_is_the_loss_trained_on():
    """timm's recipe smooths targets (0.1): the recipe's key reaches the loss, index and soft targets alike."""
    losses = {}
    for smoothing in (0.0, 0.3):
        trainer = _trainer(None, lr=1e-12, ema_decay=0.0, label_smoothing=smoothing)  # a step changes nothing
        data, targets = _batches(trainer)
        trainer.model.eval()  # the same logits the training pass sees (no dropout, BatchNorm's running stats)
        with torch.no_grad():
            logits = torch.cat([trainer.model(inputs) for _, inputs in trainer.feed.inputs(data)])
        trainer.trained.train = lambda mode=True: trainer.trained  # keep eval mode through train_epoch
        losses[smoothing], _ = trainer.train_epoch(data, targets, "train")
        log_p = logits.log_softmax(-1)
        expected = -(1 - smoothing) * log_p[torch.arange(16), targets] - smoothing * log_p.mean(-1)
        assert losses[smoothing] == pytest.approx(expected.mean().item(), rel=1e-4)
    assert losses[0.3] != pytest.approx(losses[0.0], rel=1e-3)


def test_an_ema_half_life_follows_the_net_from_the_first_step_and_counts_steps_across_a_resume():
    trainer = _trainer(None, ema_decay=0.0, ema_half_life=1.0)  # 4 steps an epoch: a half-life of 4 steps
    assert trainer.ema.decay == pytest.approx(0.5 ** 0.25)
    data, targets = _batches(trainer)
    trainer.train_epoch(data, targets, "train")  # 4 steps: the mean of the 4, the starting weights gone
    assert trainer.schedule.last_epoch == 4
    ema, net = dict(trainer.ema.module.named_parameters()), dict(trainer.model.named_parameters())
    assert not torch.equal(ema["classifier.weight"], net["classifier.weight"])
    resumed = _trainer(None, ema_decay=0.0, ema_half_life=1.0)
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.schedule.last_epoch == 4  # the step timm's warm-up reads goes on from there
    assert resumed.ema.get_decay(resumed.schedule.last_epoch + 1) == pytest.approx(4 / 5)  # (k - 1) / k, under 0.84
    # Without the warm-up (the GPU preset's form of the CPU rows' fixed 0.99 a step): the half-life from step 1.
    unwarmed = _trainer(None, ema_decay=0.0, ema_half_life=1.0, ema_warmup=False)
    assert not unwarmed.ema_counts_steps and unwarmed.ema.get_decay(None) == pytest.approx(0.5 ** 0.25)  # every step


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")  # meta holds no data
def test_a_checkpoint_names_no_device_and_resumes_on_another_one(tmp_path):
    """A checkpoint written on one device resumes on another: on a GPU ``torch.load(map_location=<the gpu>)`` put
    the CPU generator's state on the GPU and ``torch.set_rng_state`` refused it; the meta device stands in for
    the other device here, as it does for a GPU's tensors (no data on the CPU)."""
    written = _trainer(None)
    written.train_epoch(*_batches(written), "train")
    checkpoint = Checkpoint(tmp_path, {"model": "net"})
    checkpoint.save_last(written, 0)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    tensors = [t for t in torch.utils._pytree.tree_leaves(saved) if torch.is_tensor(t)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)

    # timm's EMA keeps a generator, which meta lacks
    elsewhere = _trainer(None, device="meta", ema_decay=0.0, ema_half_life=0.0)
    assert checkpoint.resume(elsewhere) == 1
    assert elsewhere.schedule.last_epoch == written.schedule.last_epoch
    assert elsewhere.optimizer.state_dict()["state"][0]["exp_avg"].device.type == "meta"
    assert torch.equal(torch.get_rng_state(), saved["state"]["rng"])
    again = _trainer(None)  # and back on the CPU: the same weights
    assert checkpoint.resume(again) == 1
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 written.model.state_dict().values()))
