"""Is the JEPA term collapsed? Metrics of the read-outs of held-out pairs, computed by the
training process (every ``train.eval_every``), by ``scripts/collapse_check.py`` and by
``python -m megajepa.analyze``.

:func:`jepa_readouts` lays the examples out exactly as training does (``layout.pack`` with
the run's ``k``, ``read_at`` and ``reverse``) and returns the rows the JEPA loss compares,
``Pred(Enc(source))`` and ``Enc(target)``, one pair per JEPA pair, in example order.
:func:`collapse_metrics` then reports, with every vector L2-normalized first::

    paired_cos     mean_i cos(P_i, C_i)              what the JEPA loss pushes up
    shuffled_cos   mean_i cos(P_i, C_pi(i))          pi: a seeded random derangement
    code_code_cos  mean_{i != j} cos(C_i, C_j)       target read-outs among themselves
    pred_pred_cos  mean_{i != j} cos(P_i, P_j)
    eff_rank_code, eff_rank_pred                     exp(-sum_k p_k log p_k), p = s / sum(s),
                                                     s: singular values of the [N, D] matrix of
                                                     normalized rows (Roy & Vetterli, 2007)

A collapse onto one vector gives ``paired = shuffled = code_code = pred_pred = 1`` and both
effective ranks 1; read-outs spread over D directions give ``shuffled`` near 0 and ranks up
to ``min(N, D)``. Rows are not centred: a large shared component counts as one direction.

:func:`diagnostics` gives the paper appendix's numbers for ``Enc(Text)`` / ``Enc(Code)``
(least-squares residual, singular values of the difference, mean cosine), :func:`log_diagnostics`
sends them to TensorBoard with their figures; :mod:`megajepa.analyze` is the command over them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from megajepa.layout import example_cost, layout_example, pack, plan_rows, readable
from megajepa.objective import hidden_states

METRICS = ("paired_cos", "shuffled_cos", "code_code_cos", "pred_pred_cos", "eff_rank_code",
           "eff_rank_pred")


def _normalized(x) -> np.ndarray:
    x = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def effective_rank(x) -> float:
    """``exp`` of the entropy of the normalized singular values of ``x [N, D]``."""
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation with no fixed point (``n >= 2``): i -> the next index of one random cycle."""
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def _offdiag_mean(x: np.ndarray) -> float:
    g = x @ x.T
    n = len(x)
    return float((g.sum() - np.trace(g)) / (n * (n - 1)))


def collapse_metrics(pred, code, *, seed: int = 0) -> dict:
    """The metrics of the module docstring for paired read-outs ``pred, code [N, D]``
    (numpy arrays or tensors), ``N >= 2``."""
    p, c = _normalized(pred), _normalized(code)
    if p.shape != c.shape or p.ndim != 2 or len(p) < 2:
        raise ValueError(f"collapse metrics need two [N, D] arrays of the same shape with N >= 2, "
                         f"got {p.shape} and {c.shape}")
    perm = derangement(len(p), seed)
    return dict(n=len(p), dim=int(p.shape[1]),
                paired_cos=float((p * c).sum(1).mean()),
                shuffled_cos=float((p * c[perm]).sum(1).mean()),
                code_code_cos=_offdiag_mean(c), pred_pred_cos=_offdiag_mean(p),
                eff_rank_code=effective_rank(c), eff_rank_pred=effective_rank(p))


@torch.no_grad()
def batch_readouts(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` float32 read-outs of one packed batch, on the model's device: the
    rows of the final-norm hidden states that the JEPA loss compares. The training process
    calls it on each rank's held-out micro-batches (the same number of forwards on every
    rank, as ZeRO-3 needs) and gathers the rows for :func:`collapse_metrics`."""
    batch = batch.to(next(model.parameters()).device)
    h = hidden_states(model, batch.input_ids, batch.position_ids, batch.doc_ids, batch.roles)
    flat = h.reshape(-1, h.shape[-1]).float()
    return flat.index_select(0, batch.pred_index), flat.index_select(0, batch.target_index)


@torch.no_grad()
def jepa_readouts(model, examples, *, k: int, pred_ids, pad_id: int, seq_len: int,
                  read_at: str = "end", reverse: bool = False, jepa_pairs: str = "next",
                  rows_per_forward: int = 16):
    """``(pred [P, D], target [P, D])`` float64 numpy read-outs of the JEPA pairs of
    ``examples`` (in example order), from packed forwards of ``rows_per_forward`` rows with
    the training layout and attention mask (one process; see :func:`batch_readouts` for
    data-parallel use). Raises ``ValueError`` for an example longer than ``seq_len`` or one
    that ``read_at`` cannot read."""
    kw = dict(k=k, reverse=reverse, jepa_pairs=jepa_pairs, read_at=read_at)
    examples = list(examples)
    costs = [example_cost(ex, **kw) for ex in examples]
    for i, ex in enumerate(examples):
        if costs[i] > seq_len or not readable(ex, read_at):
            why = f"{costs[i]} tokens, longer than seq_len={seq_len}" if costs[i] > seq_len else \
                f"a view without content for read_at={read_at!r}"
            raise ValueError(f"example {i}: {why}")
    n_pairs = [len(layout_example(ex, pred_ids=pred_ids, **kw).pairs) for ex in examples]
    rows = plan_rows(costs, seq_len)
    preds, targets, owner = [], [], []
    for start in range(0, len(rows), rows_per_forward):
        chunk = rows[start:start + rows_per_forward]
        ids = [i for members in chunk for i in members]
        where = {i: j for j, i in enumerate(ids)}
        batch = pack([examples[i] for i in ids], seq_len, pred_ids=pred_ids, pad_id=pad_id,
                     rows=[[where[i] for i in members] for members in chunk], **kw)
        owner += [i for i in ids for _ in range(n_pairs[i])]  # pack's emission order
        p, t = batch_readouts(model, batch)
        preds.append(p.cpu().double().numpy())
        targets.append(t.cpu().double().numpy())
    dim = model.config.hidden_size
    pred = np.concatenate(preds) if preds else np.zeros((0, dim))
    target = np.concatenate(targets) if targets else np.zeros((0, dim))
    order = np.argsort(np.asarray(owner, dtype=np.int64), kind="stable")
    return pred[order], target[order]


def diagnostics(text: np.ndarray, code: np.ndarray, top_k: int = 100) -> dict:
    """The appendix's numbers for paired embeddings ``text``, ``code`` of shape ``[N, D]``."""
    t = np.asarray(text, dtype=np.float64)
    c = np.asarray(code, dtype=np.float64)
    if t.ndim != 2 or t.shape != c.shape:
        raise ValueError(f"need two [N, D] arrays of one shape, got {t.shape} and {c.shape}")
    x, *_ = np.linalg.lstsq(t, c, rcond=None)
    resid = t @ x - c
    frob = float(np.linalg.norm(resid))
    sv = np.linalg.svd(t - c, compute_uv=False)
    norms = np.linalg.norm(t, axis=1) * np.linalg.norm(c, axis=1)
    cos = np.sum(t * c, axis=1) / np.where(norms > 0, norms, 1.0)
    code_norm = float(np.linalg.norm(c))
    return {
        "n": int(t.shape[0]), "dim": int(t.shape[1]),
        "lstsq_residual": frob,
        "lstsq_residual_relative": frob / code_norm if code_norm > 0 else float("nan"),
        "lstsq_residual_spectral": float(np.linalg.norm(resid, 2)) if resid.size else 0.0,
        "singular_values": [float(s) for s in sv[:top_k]],
        "cosine_mean": float(cos.mean()),
    }


def tsne_points(text: np.ndarray, code: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of both clouds together: rows ``[:N]`` are text, ``[N:]`` code.

    Runs single-threaded: on a busy shared CPU, OpenMP threads spinning made it ~30x
    slower (2,000 points take ~9 s on one core).
    """
    from sklearn.manifold import TSNE  # scikit-learn loads only when a t-SNE is asked for
    from threadpoolctl import threadpool_limits

    both = np.concatenate([text, code]).astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (len(both) - 1) / 3)))
    with threadpool_limits(limits=1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    ).fit_transform(both)


def _figure():
    from matplotlib.figure import Figure  # matplotlib loads only when a figure is drawn
    return Figure(figsize=(5, 4), dpi=100)


def plot_tsne(points: np.ndarray, path: Optional[str] = None, title: str = "t-SNE"):
    fig = _figure()
    ax = fig.add_subplot()
    n = len(points) // 2
    ax.scatter(points[:n, 0], points[:n, 1], s=6, alpha=0.6, label="Enc(Text)")
    ax.scatter(points[n:, 0], points[n:, 1], s=6, alpha=0.6, label="Enc(Code)")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig


def plot_singular_values(sv: Sequence[float], path: Optional[str] = None):
    fig = _figure()
    ax = fig.add_subplot()
    ax.semilogy(np.arange(1, len(sv) + 1), np.maximum(np.asarray(sv), 1e-12), marker=".")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value of Enc(Text) - Enc(Code)")
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig


def log_diagnostics(writer, step: int, diag: dict, tsne: Optional[np.ndarray] = None,
                    prefix: str = "diagnostics") -> None:
    """Write ``diag`` (from :func:`diagnostics`) to a TensorBoard ``SummaryWriter``:
    scalars, the singular-value curve as a histogram and a figure, and the t-SNE figure."""
    for key in ("lstsq_residual", "lstsq_residual_relative", "lstsq_residual_spectral",
                "cosine_mean"):
        writer.add_scalar(f"{prefix}/{key}", diag[key], step)
    sv = np.asarray(diag["singular_values"])
    if sv.size:
        writer.add_scalar(f"{prefix}/singular_value_top1", float(sv[0]), step)
        writer.add_scalar(f"{prefix}/singular_value_share_top10",
                          float(sv[:10].sum() / max(sv.sum(), 1e-30)), step)
        writer.add_histogram(f"{prefix}/singular_values", sv, step)
        writer.add_figure(f"{prefix}/singular_values", plot_singular_values(sv), step)
    if tsne is not None:
        writer.add_figure(f"{prefix}/tsne", plot_tsne(tsne, title=f"step {step}"), step)
