"""cuda_graph.py: the training step replayed as a CUDA graph (replayed_as_cuda_graph), and when step1.py uses it.

The first tests run anywhere: they stand in for torch.cuda's graph calls on the CPU, to check what the helper
does with them (warm-up, capture, which steps replay, a capture that fails), and which runs of step1.py ask for a
graph (--cuda-graph, --no-cuda-graph, the CPU). The tests marked `gpu` run the real thing; they need an NVIDIA GPU
and are skipped without one (CI has none): run `python -m pytest` on a machine with one.
"""
import contextlib
import functools

import pytest
import torch
import torch.nn as nn

import cuda_graph
import step1
from helpers import run_on_the_tiny_data, train
from model import MyNet


class FakeGraphs:
    """torch.cuda's graph and stream calls, on the CPU. As on a GPU, a capture records the step without running
    it, and a replay runs what was recorded again, reading whatever the recorded tensors hold by then. fail makes
    the capture fail: "at its start" or "midway" (where torch leaves its capture stream current), with a message,
    or "with no message"."""

    def __init__(self, monkeypatch, fail=None):
        self.capturing = None
        self.captures = 0
        self.replays = 0
        self.fail = fail
        fakes = self

        self.waits = []  # (stream, the stream it waited for), in order

        class Stream:
            def wait_stream(self, other):
                fakes.waits.append((self, other))

        self.default_stream = self.current = Stream()

        class CUDAGraph:
            def replay(self):
                fakes.replays += 1
                self.recorded()

        @contextlib.contextmanager
        def graph(cuda_graph):
            fakes.captures += 1
            if fail == "at its start":
                raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might ...")
            if fail == "with no message":
                raise RuntimeError("")
            fakes.capturing = cuda_graph
            fakes.current = Stream()  # the capture's own stream
            try:
                yield
            except Exception as error:  # as torch's capture_end, which fails too, before it makes the stream current
                fakes.capturing = None
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from error
            fakes.capturing = None
            fakes.current = fakes.default_stream

        def set_stream(stream):
            fakes.current = stream

        for name, fake in [("CUDAGraph", CUDAGraph), ("graph", graph), ("Stream", lambda device=None: Stream()),
                           ("stream", lambda s: contextlib.nullcontext()), ("set_stream", set_stream),
                           ("current_stream", lambda device=None: fakes.current)]:
            monkeypatch.setattr(torch.cuda, name, fake)

    def recording(self, training_step):
        """training_step, which records itself instead of running while a capture is under way."""
        def step(images, labels):
            if self.capturing and self.fail == "midway":
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            if self.capturing:
                self.capturing.recorded = functools.partial(training_step, images, labels)
            else:
                training_step(images, labels)
        return step


def training(seed=0):
    """A model, its running loss and main()'s training step."""
    torch.manual_seed(seed)
    model = MyNet()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, fused=True)
    running_loss = torch.zeros(())

    def training_step(images, labels):
        optimizer.zero_grad(set_to_none=False)
        loss = criterion(model(step1.to_float(images)), labels)
        loss.backward()
        optimizer.step()
        running_loss.add_(loss.detach())

    return model, running_loss, training_step


BATCH_SIZES = [10, 4, 10, 10, 10, 10, 6, 10, 10, 10]


def batches():
    """Mini-batches of small random images and their labels, of BATCH_SIZES, each a new tensor as a DataLoader's."""
    torch.manual_seed(1)
    return [(torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (size,)))
            for size in BATCH_SIZES]


def test_replays_train_exactly_as_ordinary_steps(monkeypatch):
    model, running_loss, training_step = training()
    for images, labels in batches():
        training_step(images, labels)

    fakes = FakeGraphs(monkeypatch)
    graphed_model, graphed_loss, graphed_step = training()
    step = cuda_graph.replayed_as_cuda_graph(fakes.recording(graphed_step), "cpu")
    for images, labels in batches():
        step(images, labels)

    assert fakes.captures == 1
    assert fakes.replays == BATCH_SIZES.count(10) - 3  # three full steps warm up, every later one replays
    assert torch.equal(graphed_loss, running_loss)
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in graphed_model.state_dict().items())
    assert not torch.equal(expected["fc_layers.5.weight"], training()[0].state_dict()["fc_layers.5.weight"])


@pytest.mark.parametrize("fail, reason", [
    ("at its start", "operation not permitted when stream is capturing"),
    ("midway", "CUDA error: operation failed due to a previous error during capture"),
    ("with no message", "RuntimeError"),
])
def test_a_capture_that_fails_is_one_warning_and_every_step_runs_as_usual(monkeypatch, capsys, fail, reason):
    model, running_loss, training_step = training()
    for images, labels in batches():
        training_step(images, labels)

    fakes = FakeGraphs(monkeypatch, fail=fail)
    graphed_model, graphed_loss, graphed_step = training()
    step = cuda_graph.replayed_as_cuda_graph(fakes.recording(graphed_step), "cpu")
    for images, labels in batches():
        step(images, labels)

    assert capsys.readouterr().err.splitlines() == [
        f"warning: the training step could not be captured as a CUDA graph ({reason}); training goes on without it"]
    assert (fakes.captures, fakes.replays) == (1, 0)  # tried once, not again at every step
    assert fakes.current is fakes.default_stream  # the later steps run where they ran before
    assert torch.equal(graphed_loss, running_loss)
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in graphed_model.state_dict().items())


def test_the_full_size_is_the_first_mini_batch_s_not_the_option_s(monkeypatch):
    """--batch-size larger than the data: one mini-batch an epoch, all the images; no memory for the rest."""
    fakes = FakeGraphs(monkeypatch)
    model, running_loss, training_step = training()
    step = cuda_graph.replayed_as_cuda_graph(fakes.recording(training_step), "cpu")
    for _ in range(5):
        step(torch.zeros(60, 3, 32, 32, dtype=torch.uint8), torch.zeros(60, dtype=torch.long))
    assert (fakes.captures, fakes.replays) == (1, 2)  # warm-up on the first three, replays of 60 images after


def test_each_ordinary_step_runs_after_the_work_before_it_and_the_work_after_it_waits_for_it(monkeypatch):
    """The recipe's streams: the side stream waits for the main one before a step, and the main one for the side
    one after it, or the next mini-batch's copy could overwrite what a step still reads."""
    fakes = FakeGraphs(monkeypatch)
    model, running_loss, training_step = training()
    step = cuda_graph.replayed_as_cuda_graph(fakes.recording(training_step), "cpu")
    images, labels = batches()[0]
    step(images, labels)
    [(side, main), (waiting, waited_for)] = fakes.waits
    assert main is fakes.default_stream and side is not main
    assert (waiting, waited_for) == (main, side)


# When step1.py asks for a graph


def test_no_graph_on_the_cpu_or_when_turned_off(cifar_dir, tmp_path, monkeypatch):
    def no_graph(*args):
        raise AssertionError("a CUDA graph on the CPU")

    monkeypatch.setattr(cuda_graph, "replayed_as_cuda_graph", no_graph)
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1")
    assert lines[0] == "Device            : cpu"


@pytest.mark.parametrize("flag, graphed", [([], True), (["--cuda-graph"], True), (["--no-cuda-graph"], False)],
                         ids=["by default", "--cuda-graph", "--no-cuda-graph"])
def test_on_cuda_the_step_is_graphed_unless_no_cuda_graph(cifar_dir, tmp_path, monkeypatch, flag, graphed):
    """Runs anywhere: a device that says it is CUDA (its tensors stay on the CPU), and the graph left out."""
    class CudaForTheTest(str):
        type = "cuda"

    wrapped = []

    def recording(training_step, device):
        wrapped.append(device.type)
        return training_step

    monkeypatch.setattr(step1, "device_option", lambda name: CudaForTheTest("cpu"))
    monkeypatch.setattr(cuda_graph, "replayed_as_cuda_graph", recording)
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "10", *flag)
    assert wrapped == (["cuda"] if graphed else [])
    assert lines[-1].startswith("Saved the weights")


# On an NVIDIA GPU


def gpu_run(cifar_dir, output, *extra):
    """A run on the GPU, on the tiny data set: 120 images in mini-batches of 25, so each epoch ends with a
    mini-batch of 20, an ordinary step. Returns its lines but the last (it has a time), error output and weights."""
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "2", "--batch-size", "25", "--log-interval",
                                            "2", "--lr", "0.02", *extra, device="cuda")
    assert code == 0, err
    assert lines[-1].startswith("Saved the weights")
    return lines[:-1], err, torch.load(output, weights_only=True)


@pytest.mark.gpu
def test_a_graphed_run_trains_as_an_eager_one(cifar_dir, tmp_path, monkeypatch):
    replays = []
    real_replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda graph: (replays.append(1), real_replay(graph))[1])
    graphed_lines, err, graphed = gpu_run(cifar_dir, tmp_path / "graphed.pth")
    assert err == ""
    assert len(replays) == 2 * 4 - 3  # 4 full mini-batches an epoch; the first 3 of all warm up
    eager_lines, _, eager = gpu_run(cifar_dir, tmp_path / "eager.pth", "--no-cuda-graph")
    assert len(replays) == 5  # none more
    assert graphed_lines[0] == "Device            : cuda"
    assert graphed_lines == eager_lines
    for name, tensor in eager.items():  # the same weights, up to float rounding at most
        torch.testing.assert_close(graphed[name], tensor, msg=name)


@pytest.mark.gpu
def test_the_same_seed_gives_the_same_graphed_run(cifar_dir, tmp_path):
    first_lines, _, first = gpu_run(cifar_dir, tmp_path / "first.pth")
    again_lines, _, again = gpu_run(cifar_dir, tmp_path / "again.pth")
    assert first_lines == again_lines
    assert all(torch.equal(first[name], again[name]) for name in first)


def refused_capture(message):
    """torch.cuda.graph as it fails to begin a capture, with message."""
    @contextlib.contextmanager
    def graph(cuda_graph):
        raise RuntimeError(message)
        yield

    return graph


@pytest.mark.gpu
@pytest.mark.parametrize("where", ["at its start", "midway"])
def test_a_capture_that_fails_on_the_gpu_is_one_warning_and_trains_as_usual(cifar_dir, tmp_path, monkeypatch, where):
    eager_lines, _, eager = gpu_run(cifar_dir, tmp_path / "eager.pth", "--no-cuda-graph")
    if where == "at its start":  # as an old driver refuses to begin one
        monkeypatch.setattr(torch.cuda, "graph", refused_capture("CUDA error: operation not supported\n"
                                                                 "CUDA kernel errors might be reported later"))
    else:
        real_to_float = step1.to_float

        def syncing_to_float(images):  # waiting for the GPU is not allowed while a capture is under way
            if torch.cuda.is_current_stream_capturing():
                torch.cuda.synchronize()
            return real_to_float(images)

        monkeypatch.setattr(step1, "to_float", syncing_to_float)
    lines, err, weights = gpu_run(cifar_dir, tmp_path / "fallback.pth")
    [warning] = err.splitlines()
    assert warning.startswith("warning: the training step could not be captured as a CUDA graph (")
    assert warning.endswith("); training goes on without it")
    if where == "at its start":
        assert "(CUDA error: operation not supported);" in warning  # its first line only
    assert lines == eager_lines
    for name, tensor in eager.items():
        torch.testing.assert_close(weights[name], tensor, msg=name)


@pytest.mark.gpu
def test_a_capture_error_without_a_message_is_named_by_its_type(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "graph", refused_capture(""))
    _, err, _ = gpu_run(cifar_dir, tmp_path / "w.pth")
    assert err.splitlines() == ["warning: the training step could not be captured as a CUDA graph (RuntimeError); "
                                "training goes on without it"]


@pytest.mark.gpu
def test_a_batch_size_larger_than_the_data_takes_no_memory_for_it(cifar_dir, tmp_path):
    torch.cuda.reset_peak_memory_stats()
    lines, err, _ = gpu_run(cifar_dir, tmp_path / "w.pth", "--batch-size", "1000000000")  # 8 GB of positions before
    assert err == ""
    assert sum("mini-batch :    1," in line for line in lines) == 2  # one mini-batch of all 120 images an epoch
    assert torch.cuda.max_memory_allocated() < 2**28
