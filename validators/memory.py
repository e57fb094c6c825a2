"""Peak memory a model adds, measured in a fresh subprocess so nothing else is counted.

The measuring process already holds other models (the dense source, other backends) and
caches, so its own RSS says little about one model. `measure_memory` starts
`python -m validators.memory`, which imports the backend's libraries, notes its resident
memory (the baseline), loads the model, runs one prefill + decode workload, and reports:

- `model_rss_bytes`: what loading and running the model added to the process's peak resident
  memory (peak − baseline), on every device;
- `cuda_peak_bytes`: torch's peak CUDA allocation, for the torch backend on a CUDA device.

`model_bytes` is the figure gates and reports use: the CUDA peak on a GPU, else the RSS delta.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import SculptError

from .backends import BACKENDS, ModelFiles, open_runner

RESULT_PREFIX = "sculpt-memory-result "
PROBE_TIMEOUT_S = 1800


@dataclass(frozen=True)
class MemoryResult:
    backend: str
    device: str
    baseline_rss_bytes: int  # after the backend's libraries were imported, before the model was loaded
    peak_rss_bytes: int  # the probe process's peak resident memory
    model_rss_bytes: int  # what the model added: peak (or resident at the end, if larger) minus the baseline
    cuda_peak_bytes: int | None  # torch's peak CUDA allocation (torch backend on a CUDA device), else None
    workload: dict  # batch, prompt_len, new_tokens

    @property
    def model_bytes(self) -> int:
        return self.cuda_peak_bytes if self.cuda_peak_bytes is not None else self.model_rss_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "model_bytes": self.model_bytes}


def measure_memory(backend: str, files: ModelFiles, batch: int = 1, prompt_len: int = 512, new_tokens: int = 8,
                   timeout_s: float = PROBE_TIMEOUT_S) -> MemoryResult:
    """Run the workload (prefill `prompt_len` tokens × `batch`, then `new_tokens` decode steps) in a
    fresh process and report the memory `backend` adds for `files`."""
    if sys.platform == "win32":
        raise SculptError("memory measurement needs Linux or macOS: set validate.memory to false on Windows")
    spec = {"backend": backend, "files": files.as_dict(), "parent_pid": os.getpid(),
            "workload": {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens}}
    root = str(Path(__file__).resolve().parents[1])  # the probe imports this very checkout, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "validators.memory"], input=json.dumps(spec), text=True,
                              capture_output=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SculptError(f"measuring the memory of the {backend} backend took over {timeout_s:.0f} s: "
                          f"set validate.memory to false, or lower validate.prefill_lengths") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode < 0:
        raise SculptError(f"the memory probe for the {backend} backend was killed by signal {-done.returncode} "
                          f"(out of memory?): lower validate.prefill_lengths / decode_batch_sizes, or set "
                          f"validate.memory to false")
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"memory probe for {backend} failed (exit {done.returncode}): {tail}")
    return MemoryResult(**json.loads(lines[-1][len(RESULT_PREFIX):]))


def current_rss() -> int | None:
    """This process's resident memory now (Linux); None where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss() -> int:
    """This process's own peak resident memory so far.

    On Linux it is the address space's high-water mark (VmHWM in /proc/self/status). getrusage's
    ru_maxrss is not: it also holds the peak of the process this one was spawned from (the parent's
    address space is counted at exec), so a probe started by a large `sculpt` process reported the
    parent's peak as the model's."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; elsewhere KiB


def _exit_with_parent(parent_pid: int) -> None:
    """A probe whose parent died (a killed run) stops at once instead of finishing its workload."""
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _probe(spec: dict) -> dict:
    import torch
    import transformers  # noqa: F401  (shared libraries load before the baseline, so they are not counted)

    import pipeline  # noqa: F401

    backend, files, workload = spec["backend"], ModelFiles.from_dict(spec["files"]), spec["workload"]
    BACKENDS[backend].check(files)  # imports the backend's own library
    cuda = backend == "torch" and files.device.startswith("cuda")
    if backend == "torch":
        _prime_torch(files)
    gc.collect()
    baseline = current_rss() or peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats(files.device)
    runner = open_runner(backend, files)
    runner.decode_throughput(batch=workload["batch"], prompt_len=workload["prompt_len"],
                             new_tokens=workload["new_tokens"], warmup=0, repeats=1)
    peak, resident = peak_rss(), current_rss() or 0
    return {"backend": backend, "device": files.device, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "model_rss_bytes": max(peak - baseline, resident - baseline, 0),
            "cuda_peak_bytes": int(torch.cuda.max_memory_allocated(files.device)) if cuda else None,
            "workload": workload}


def _prime_torch(files: ModelFiles) -> None:
    """Load the model's code and start torch's kernels and thread pools before the baseline: they cost
    tens of MiB the same for any model, which would otherwise be counted as the model's."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(files.checkpoint))]  # imports the modeling module
    with torch.no_grad():
        q = torch.randn(1, 2, 8, 16, device=files.device)
        F.scaled_dot_product_attention(q, q, q, is_causal=True).matmul(torch.randn(16, 16, device=files.device))
        torch.randn(4, 32, device=files.device).softmax(-1).log_softmax(-1)


def main() -> None:
    spec = json.loads(sys.stdin.read())
    _exit_with_parent(spec["parent_pid"])
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print(RESULT_PREFIX + json.dumps(_probe(spec)), flush=True)


if __name__ == "__main__":
    main()
