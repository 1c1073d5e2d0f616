"""Train the turn heads (talkstream/models/turn_head.py) on `turn_data`'s windows.

The encoder is frozen (it is the ears' Whisper tiny.en); its states for every window are computed once and cached
next to the data. Training voices are split by voice into fit and check (the check voices choose the threshold and
the epoch); the evaluation voices and sentences are only measured, at the end, never chosen on.

    talkstream train turn-data --out runs/turn_data
    talkstream train turn-heads --data runs/turn_data --out talkstream/weights
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkstream.checkpoint import save_checkpoint
from talkstream.models import turn_head
from talkstream.models.turn_head import HeadMember, TurnHead, TurnHeadConfig, fit_window, noise_floor
from talkstream.training.turn_data import BARGE_BEFORE_S, RATE
from talkstream.whisper.encoder import load_whisper_encoder

WINDOWS = {"end": (3.0, "end"), "barge": (0.6, "start")}
MAX_FALSE = {"end": 0.05, "barge": 0.03}
# 2: windows given the heads' noise floor (models/turn_head.py noise_floor) as served; barge 3: training windows
# also cut shorter (`SHORT_BARGE_S`)
FEATURES_VERSION = {"end": 2, "barge": 3}
# The barge-in head also learns from each training window cut to this much speech: the VAD's onset estimate lags the
# speech by 0-120 ms, so at `barge_decide_ms` the head has heard 0.18-0.3 s of it, less when it decides sooner.
SHORT_BARGE_S = (0.12, 0.22)


def _files(data: Path, split: str) -> list[Path]:
    """A split's files: eval-*, or train-*, trainb-* (more barge-in windows), trainm-* (more end-of-turn windows) and
    trainx-* (blended Kokoro voices) for "train"."""
    more = sorted(data.glob("trainb-*.npz")) + sorted(data.glob("trainm-*.npz")) + sorted(data.glob("trainx-*.npz"))
    found = sorted(data.glob(f"{split}-*.npz")) + (more if split == "train" else [])
    return [f for f in found if not f.name.endswith(".tmp.npz")]


def _load_file(f: Path, task: str) -> tuple[list[np.ndarray], np.ndarray, list[str], list[str]]:
    z = np.load(f)
    if f"{task}_x" not in z:  # `trainb-` files hold barge-in windows only, `trainm-` end-of-turn ones
        return [], np.zeros(0), [], []
    xs, ys = list(z[f"{task}_x"].astype(np.float32)), np.asarray(z[f"{task}_y"])
    kinds, voices = [str(k) for k in z[f"{task}_kind"]], [str(z["voice"])] * len(ys)
    if task == "barge" and not f.name.startswith("eval-"):
        rng = np.random.default_rng(sum(map(ord, f.name)))  # the same cuts every run
        short = []
        for x in xs:
            y = x.copy()
            y[int((BARGE_BEFORE_S + rng.uniform(*SHORT_BARGE_S)) * RATE) :] = 0.0
            short.append(y)
        xs, ys, kinds, voices = xs + short, np.concatenate([ys, ys]), kinds + kinds, voices + voices
    return xs, ys, kinds, voices


@torch.no_grad()
def encoder_states(windows: list[np.ndarray], window_s: float, align: str, batch: int = 16) -> torch.Tensor:
    enc = load_whisper_encoder()
    out = []
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(np.stack([noise_floor(fit_window(w, window_s, align)) for w in windows[i : i + batch]]))
        out.append(turn_head.encoder_states(enc, x).half())
    return torch.cat(out)


def _cached(cache: Path, data: Path, split: str, task: str) -> dict[str, dict]:
    """The cache's entries per data file (an older cache, one block for all files, is split by file)."""
    if not cache.exists():
        return {}
    got = torch.load(cache)
    if got.get("version") != FEATURES_VERSION[task]:
        return {}
    if "per_file" in got:
        return got["per_file"]
    per_file, at = {}, 0
    for name in got["files"]:
        n = len(_load_file(data / name, task)[1])
        per_file[name] = {k: got[k][at : at + n] for k in ("states", "y", "kinds", "voices")}
        at += n
    return per_file


def features(data: Path, split: str, task: str) -> dict:
    """Encoder states and labels of one split and task, cached beside the data per file (new files are encoded,
    the others read back)."""
    cache = data / f"features-{split}-{task}.pt"
    window_s, align = WINDOWS[task]
    per_file = _cached(cache, data, split, task)
    files = [p.name for p in _files(data, split)]
    new = [name for name in files if name not in per_file]
    t = time.time()
    for name in new:
        xs, ys, kinds, voices = _load_file(data / name, task)
        states = encoder_states(xs, window_s, align) if xs else torch.zeros(0, round(window_s * 50), 384).half()
        per_file[name] = {"states": states, "y": torch.from_numpy(ys).float(), "kinds": kinds, "voices": voices}
    if new:
        print(f"{split}/{task}: {len(new)} new files encoded in {time.time() - t:.0f} s", flush=True)
        torch.save({"version": FEATURES_VERSION[task], "per_file": per_file}, cache)
    parts = [per_file[name] for name in files]
    return {"version": FEATURES_VERSION[task], "files": files, "states": torch.cat([p["states"] for p in parts]),
            "y": torch.cat([p["y"] for p in parts]), "kinds": [k for p in parts for k in p["kinds"]],
            "voices": [v for p in parts for v in p["voices"]]}


def _auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """The chance that a positive scores above a negative (ties half): threshold-free."""
    pos, neg = p[y == 1], p[y == 0]
    if not pos.size or not neg.size:
        return None
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size))


def _rates(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    pos, neg = y == 1, y == 0
    return {
        "auc": _auc(p, y),
        "accuracy": float(np.mean((p >= threshold) == pos)),
        "positive_kept": float(np.mean(p[pos] >= threshold)) if pos.any() else None,  # complete / backchannel
        "negative_taken_as_positive": float(np.mean(p[neg] >= threshold)) if neg.any() else None,
    }


def _fit_member(cfg: TurnHeadConfig, fit_x, fit_y, chk_x, chk_y, epochs: int, seed: int, noise: float,
                weight_decay: float, lr: float) -> tuple[HeadMember, int]:
    """One member from its own seed; the epoch with the lowest check loss is kept."""
    torch.manual_seed(seed)
    member = HeadMember(cfg)
    opt = torch.optim.AdamW(member.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch = float("inf"), None, 0
    for epoch in range(epochs):
        member.train()
        order = torch.randperm(len(fit_y))
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            x = fit_x[b]
            # Noise on the frozen encoder's states: the windows are few, a head must not learn them by heart.
            loss = F.binary_cross_entropy_with_logits(member(x + noise * torch.randn_like(x)), fit_y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        member.eval()
        with torch.no_grad():
            chk = F.binary_cross_entropy_with_logits(member(chk_x), chk_y).item()
        if chk < best:
            best, best_epoch = chk, epoch
            best_state = {k: v.clone() for k, v in member.state_dict().items()}
        print(f"{cfg.task} seed {seed} epoch {epoch + 1}: train loss {loss.item():.3f}, check loss {chk:.3f}",
              flush=True)
    assert best_state is not None  # the first epoch's check loss is below inf
    member.load_state_dict(best_state)
    return member.eval(), best_epoch + 1


def train_head(task: str, data: Path, epochs: int = 30, seed: int = 0, max_false: float = 0.03, noise: float = 0.5,
               weight_decay: float = 0.05, d: int = 32, lr: float = 2e-3, members: int = 5) -> tuple:
    train, evals = features(data, "train", task), features(data, "eval", task)
    voices = sorted(set(train["voices"]))
    rng = random.Random(seed)
    check_voices = set(rng.sample(voices, max(2, len(voices) // 7)))
    check = torch.tensor([v in check_voices for v in train["voices"]])
    xs, ys = train["states"].float(), train["y"]
    fit_x, fit_y, chk_x, chk_y = xs[~check], ys[~check], xs[check], ys[check]
    cfg = TurnHeadConfig(task=task, window_s=WINDOWS[task][0], d=d, members=members)
    head = TurnHead(cfg)
    best_epochs = []
    for n in range(members):
        member, best_epoch = _fit_member(cfg, fit_x, fit_y, chk_x, chk_y, epochs, seed + n, noise, weight_decay, lr)
        head.members[n].load_state_dict(member.state_dict())
        best_epochs.append(best_epoch)
    head.eval()
    with torch.no_grad():
        p_chk = torch.sigmoid(head(chk_x)).numpy()
        p_eval = torch.sigmoid(head(evals["states"].float())).numpy()
    # The threshold: the lowest one at which at most `max_false` of the check voices' negatives pass as positive
    # (an incomplete turn taken as complete cuts the user off; an interruption taken as a backchannel is ignored).
    neg = np.sort(p_chk[chk_y.numpy() == 0])
    threshold = float(max(0.5, neg[min(len(neg) - 1, int(np.ceil((1 - max_false) * len(neg))))] + 1e-4)) if len(
        neg) else 0.5
    head.cfg.threshold = cfg.threshold = round(threshold, 4)
    ey = evals["y"].numpy()
    by_kind = {}
    for k in sorted(set(evals["kinds"])):
        m = np.array([kk == k for kk in evals["kinds"]])
        by_kind[k] = {"n": int(m.sum()), "taken_as_positive": float(np.mean(p_eval[m] >= threshold))}
    report = {
        "task": task, "epochs": epochs, "best_epochs": best_epochs, "seed": seed, "members": members,
        "noise": noise, "weight_decay": weight_decay, "d": d, "lr": lr,
        "fit_windows": len(fit_y), "check_windows": len(chk_y), "check_voices": sorted(check_voices),
        "threshold": cfg.threshold, "threshold_rule": f"at most {max_false:.0%} of check-voice negatives above it",
        "check": _rates(p_chk, chk_y.numpy(), threshold),
        "eval": {**_rates(p_eval, ey, threshold), "windows": len(ey), "by_kind": by_kind,
                 "voices": sorted(set(evals["voices"]))},
    }
    return head, report


def train_turn_heads(data: Path, out: Path, epochs: int = 30, seed: int = 0, members: int = 5,
                     command: list[str] | None = None) -> dict:
    reports = {}
    for task in ("end", "barge"):
        # At most 5% of the check voices' incomplete turns taken as complete (the issue's line for cut-offs); at
        # most 3% of their interruptions taken as backchannels (an interruption ignored is the worse mistake).
        head, report = train_head(task, data, epochs, seed, members=members, max_false=MAX_FALSE[task])
        report["command"] = " ".join(command or [])
        folder = save_checkpoint(head, head.cfg.to_dict(), out / f"turn_{task}", "turn_head")
        (folder / "training.json").write_text(json.dumps(report, indent=2) + "\n")
        reports[task] = report
        print(json.dumps({k: report[k] for k in ("task", "threshold", "check", "eval")}, indent=1), flush=True)
    return reports
