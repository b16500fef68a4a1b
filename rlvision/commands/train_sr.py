"""Train a super-resolution stage on frames of an RL env, for use as ``preprocess=`` in the extractor.

    rlvision train-sr --env ALE/Pong-v5 --stage flexnet_rl --scale 2 --steps 2000
    rlvision train-sr --env SyntheticPixel-v0 --env-kwargs '{size: 84}' --stage transformer_sr_rl

1. Collect frames from the env with random actions (the last frame of each observation: grey for Atari, RGB else)
   and hold out a tenth of them.
2. Make low-res/high-res pairs on the fly: random high-res crops, shrunk by ``scale`` with a random choice of
   bilinear, bicubic and area (as the seed did).
3. Train with the edge-weighted L1 loss (Sobel edge map of the target as weight, plus a floor for flat regions).
4. Report PSNR and SSIM against bicubic on the held-out frames (shrunk with ``area``, as ``make_env(low_res=...)``
   does), log before/after image grids to TensorBoard, save the weights for
   ``VisionExtractor(preprocess=..., preprocess_weights=...)``.
"""

from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import rlvision
from rlvision.envs import make_env
from rlvision.sr.metrics import edge_weighted_l1, psnr, ssim
from rlvision.commands import command_parser

MODES = ("bilinear", "bicubic", "area")


def collect_frames(env_id: str, n: int, seed: int, env_kwargs: dict) -> torch.Tensor:
    """n frames (N, c, H, W) float in [0, 1]: the newest frame of each observation, random actions."""
    env = make_env(env_id, n_envs=4, seed=seed, frame_stack=1, env_kwargs=env_kwargs)
    env.action_space.seed(seed)
    obs = env.reset()
    c = 3 if obs.shape[1] % 3 == 0 else 1
    frames = []
    while len(frames) * env.num_envs < n:
        obs, *_ = env.step(np.stack([env.action_space.sample() for _ in range(env.num_envs)]))
        frames.append(obs[:, -c:].copy())
    env.close()
    return torch.from_numpy(np.concatenate(frames)[:n]).float() / 255


def shrink(hr: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    aa = mode in ("bilinear", "bicubic")
    return F.interpolate(hr, size=size, mode=mode, antialias=aa, align_corners=False if aa else None).clamp(0, 1)


def random_batch(frames: torch.Tensor, batch: int, crop: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (side a multiple of scale) and their shrunk copies, one random interpolation per batch."""
    crop = min(crop, frames.shape[-1], frames.shape[-2]) // scale * scale
    idx = torch.randint(len(frames), (batch,))
    y = random.randint(0, frames.shape[-2] - crop)
    x = random.randint(0, frames.shape[-1] - crop)
    hr = frames[idx, :, y:y + crop, x:x + crop]
    return shrink(hr, scale, random.choice(MODES)), hr


@torch.no_grad()
def evaluate(stage, frames: torch.Tensor, scale: int) -> dict:
    """PSNR/SSIM of the stage and of bicubic on whole held-out frames shrunk with area."""
    stage.eval()
    hr = frames[:, :, :frames.shape[-2] // scale * scale, :frames.shape[-1] // scale * scale]
    lr = shrink(hr, scale, "area")
    out = torch.cat([stage(chunk) for chunk in lr.split(32)]).clamp(0, 1)
    bicubic = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    stage.train()
    return dict(psnr=round(psnr(out, hr).item(), 2), ssim=round(ssim(out, hr).item(), 4),
                bicubic_psnr=round(psnr(bicubic, hr).item(), 2), bicubic_ssim=round(ssim(bicubic, hr).item(), 4))


@torch.no_grad()
def image_grid(stage, frames: torch.Tensor, scale: int) -> torch.Tensor:
    """Rows: nearest-upscaled low-res | bicubic | stage | target, for 4 held-out frames. (3, H', W')."""
    stage.eval()
    hr = frames[:4, :, :frames.shape[-2] // scale * scale, :frames.shape[-1] // scale * scale]
    lr = shrink(hr, scale, "area")
    cols = [F.interpolate(lr, scale_factor=scale, mode="nearest"),
            F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False), stage(lr), hr]
    stage.train()
    grid = torch.cat([torch.cat(list(col), dim=-2) for col in cols], dim=-1).clamp(0, 1)
    return grid.expand(3, -1, -1) if grid.shape[0] == 1 else grid


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser("train-sr", __doc__)
    parser.add_argument("--env", default="ALE/Pong-v5", help='env whose frames train the stage (default ALE/Pong-v5)')
    parser.add_argument("--env-kwargs", type=yaml.safe_load, default={},
                        help="YAML dict for the env, e.g. '{size: 84}'")
    parser.add_argument("--stage", default="flexnet_rl", help=f"one of {rlvision.list_preprocess()}")
    parser.add_argument("--stage-kwargs", type=yaml.safe_load, default={}, help="YAML dict for the stage's builder")
    parser.add_argument("--scale", type=int, default=2, help='upscaling factor (default 2)')
    parser.add_argument("--frames", type=int, default=2000, help="frames to collect (a tenth held out)")
    parser.add_argument("--steps", type=int, default=2000, help='optimizer steps (default 2000)')
    parser.add_argument("--batch", type=int, default=16, help='frames per step (default 16)')
    parser.add_argument("--crop", type=int, default=48, help="high-res crop side")
    parser.add_argument("--lr", type=float, default=5e-4, help='Adam learning rate (default 5e-4)')
    parser.add_argument("--floor", type=float, default=0.1, help="edge-weight floor (0 = the seed's loss)")
    parser.add_argument("--seed", type=int, default=0, help='seed of the frames and the init (default 0)')
    parser.add_argument("--out", default=None, help="default: runs/sr/<stage>-x<scale>-<env>")
    parser.add_argument("--no-progress", action="store_true", help='no progress bar')
    args = parser.parse_args(argv)
    out = args.out or os.path.join("runs", "sr", f"{args.stage}-x{args.scale}-{args.env.replace('/', '-')}")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    frames = collect_frames(args.env, args.frames, args.seed, args.env_kwargs)
    held_out = max(len(frames) // 10, 1)
    train_frames, test_frames = frames[held_out:], frames[:held_out]
    stage = rlvision.create_preprocess(args.stage, scale=args.scale, channels=frames.shape[1], **args.stage_kwargs)
    print(f"{args.stage} x{args.scale}: {rlvision.count_parameters(stage):,} parameters; {len(train_frames)} "
          f"training and {held_out} held-out {tuple(frames.shape[1:])} frames from {args.env}")

    writer = SummaryWriter(out)
    writer.add_image("frames/before", image_grid(stage, test_frames, args.scale), 0)
    before = evaluate(stage, test_frames, args.scale)
    optimizer = torch.optim.AdamW(stage.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    start = time.perf_counter()
    for step in tqdm(range(1, args.steps + 1), disable=args.no_progress, desc="train_sr"):
        lr_img, hr_img = random_batch(train_frames, args.batch, args.crop, args.scale)
        loss = edge_weighted_l1(stage(lr_img), hr_img, floor=args.floor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps:
            writer.add_scalar("train/edge_l1", loss.item(), step)
    after = evaluate(stage, test_frames, args.scale)
    writer.add_image("frames/after", image_grid(stage, test_frames, args.scale), args.steps)
    for key, value in after.items():
        writer.add_scalar(f"eval/{key}", value, args.steps)
    writer.close()

    weights = os.path.join(out, "weights.pt")
    rlvision.save_preprocess(stage, weights)
    result = dict(stage=args.stage, scale=args.scale, env=args.env, steps=args.steps,
                  seconds=round(time.perf_counter() - start, 1), before=before, after=after, weights=weights)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"Use it: VisionExtractor(..., preprocess='{args.stage}', preprocess_kwargs=dict(scale={args.scale}), "
          f"preprocess_weights='{weights}'); images: tensorboard --logdir {out}")
    return result


if __name__ == "__main__":
    main()
