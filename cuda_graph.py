"""The training step, replayed as a CUDA graph on an NVIDIA GPU: the same step, done several times faster.

A training step on 10 images launches some 60 small GPU kernels, and launching them one by one takes longer than
running them. A CUDA graph records the step once and replays it with one launch. What it keeps safe: the training
itself. Replays must train exactly as ordinary steps do, so only mini-batches of the recorded size are replayed, and a
recording that fails, at its start or midway, is one warning, after which training goes on without a graph.
"""
import sys

import torch


def replayed_as_cuda_graph(training_step, device):
    """training_step(images, labels), replayed as a CUDA graph for full mini-batches (the size of the first one) once
    three ordinary steps have warmed it up.

    The recipe of PyTorch's "CUDA semantics" notes: the graph reads its inputs from tensors of its own, so each full
    mini-batch is copied into them before a replay; the ordinary steps before the recording run on a side stream."""
    side_stream = torch.cuda.Stream(device)
    graph = None
    recorded_images = None
    recorded_labels = None
    warm_up_steps = 3

    def step(images, labels):
        nonlocal graph, recorded_images, recorded_labels, warm_up_steps
        if recorded_images is None:  # as many as in a full mini-batch
            recorded_images = images.clone()
            recorded_labels = labels.clone()
        full = len(images) == len(recorded_images)
        if graph is not None and full:
            recorded_images.copy_(images)
            recorded_labels.copy_(labels)
            return graph.replay()
        side_stream.wait_stream(torch.cuda.current_stream(device))  # an ordinary step, on a side stream
        with torch.cuda.stream(side_stream):
            training_step(images, labels)
        torch.cuda.current_stream(device).wait_stream(side_stream)
        if full:
            warm_up_steps -= 1
        if warm_up_steps == 0 and full:  # warmed up: record a step (recording does not run it)
            stream = torch.cuda.current_stream(device)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    training_step(recorded_images, recorded_labels)
            except Exception as error:  # at its start or midway: nothing recorded has run, so go on without it
                graph = None
                torch.cuda.set_stream(stream)  # a capture that fails midway can leave its own stream current
                reason = str(error).strip().partition("\n")[0] or type(error).__name__
                print(f"warning: the training step could not be captured as a CUDA graph ({reason}); "
                      f"training goes on without it", file=sys.stderr)
    return step
