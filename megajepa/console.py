"""What a training run shows on the console, and where everything else goes::

    console                                        <run_dir>/train.log (rank 0)
      rank 0: where things go (run dir,              every ``megajepa`` log record, timestamped
        config.yaml, train.log, TensorBoard),        (the ZeRO file chosen, loader epochs, saves,
        the data line, the progress bar,             model options) and the library chatter that
        stop / export / final-eval lines             :func:`quiet` captured
      every rank: WARNING and above, any logger      the same warnings
      ``error: ...`` (stderr, exit 2 or 3)

Noise is silenced where it starts, never by hiding warnings:

* DeepSpeed's "Setting accelerator to CPU" warning at import: :func:`prepare` sets
  ``DS_ACCELERATOR=cpu`` when CUDA is absent (the loop trains on CPU then anyway), before
  deepspeed is imported; a ``DS_ACCELERATOR`` the user set wins.
* ``print``s inside library calls (the shm op's "built successfully" in
  ``deepspeed.init_distributed``, ``zero_to_fp32``'s progress and summary): run in :func:`quiet`.
* transformers' progress bars ("Writing model shards", "Loading weights") in the training
  process, which has its own bar: disabled by :func:`prepare`.
* torch.distributed's FutureWarnings about ``all_gather_into_tensor`` and
  ``reduce_scatter_tensor``, raised inside DeepSpeed where a user cannot act on them (our code
  calls neither): filtered by their exact messages.
"""
from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import os
import sys
import warnings

log = logging.getLogger("megajepa")
_state = {"main": True}
_OURS = "_megajepa_handler"  # marks the handlers this module installed (replaced on a new run)

# Deprecations raised inside DeepSpeed's own calls into torch.distributed.
_LIBRARY_DEPRECATIONS = (r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                         r"`torch\.distributed\.reduce_scatter_tensor` is deprecated")


def prepare() -> None:
    """Quiet the libraries at their source; call before deepspeed is imported."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    for message in _LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def setup_logging(rank: int) -> None:
    """Console: WARNING and above from every logger (``[rank r]`` on ranks other than 0).
    ``megajepa`` records at INFO are held until :func:`attach_run_log` names their file."""
    _state["main"] = rank == 0
    root = logging.getLogger()
    _drop_ours(root)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(_ConsoleFormat("" if rank == 0 else f"[rank {rank}] "))
    _mark(root, console)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    _drop_ours(log)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if rank == 0:  # what is logged before the run dir may be written (data, ZeRO file)
        _mark(log, logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1))


def attach_run_log(run_dir: str) -> str:
    """Append every ``megajepa`` record (INFO and above, the held ones first) to
    ``<run_dir>/train.log``; rank 0 only."""
    path = os.path.join(run_dir, "train.log")
    held = [h for h in log.handlers if isinstance(h, logging.handlers.MemoryHandler)]
    _drop_ours(log, close=False)
    if _state["main"]:
        fh = logging.FileHandler(path)
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for h in held:
            h.setTarget(fh)
            h.flush()
        _mark(log, fh)
    for h in held:
        h.close()
    return path


class _ConsoleFormat(logging.Formatter):
    """``warning: <message>`` (and any traceback), like the ``error:`` lines."""

    def __init__(self, prefix: str):
        super().__init__("%(message)s")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}{record.levelname.lower()}: {super().format(record)}"


def _mark(logger: logging.Logger, handler: logging.Handler) -> None:
    setattr(handler, _OURS, True)
    logger.addHandler(handler)


def _drop_ours(logger: logging.Logger, close: bool = True) -> None:
    for h in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(h)
        if close:
            h.close()


def say(message: str) -> None:
    """A line the user acts on: printed by rank 0 and kept in the run log."""
    if _state["main"]:
        print(message, flush=True)
        log.info(message)


@contextlib.contextmanager
def quiet(what: str):
    """Run a library call whose ``print``s and progress bars are chatter.

    Its stdout/stderr go to the run log; the Python warnings it raises are shown as usual
    once it returns; if it fails, what it wrote goes to stderr before the exception. Import
    the library before entering: a logging handler created inside would write to the buffer.
    """
    buf, caught = io.StringIO(), []
    try:
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise
    finally:
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    lines = [ln.strip() for ln in buf.getvalue().replace("\r", "\n").splitlines() if ln.strip()]
    if lines:
        log.info("%s said: %s", what, " | ".join(lines))
