"""``airflow-curator annotate``: CLIP embeddings, CLIP score, aesthetic and NSFW scores."""

from __future__ import annotations

import argparse

from airflow_curator.core.annotate.annotator import Options, annotate_dataset
from airflow_curator.core.errors import UsageError
from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Decode images with DALI (GPU when there is one), embed images and captions with an open_clip "
    "model and score them; writes OUTPUT/_work/annotations/NNNNN.parquet per shard."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.dataset(p)
    options.manifest(p)
    options.output(p, "job output URI (annotations go to OUTPUT/_work/annotations)")
    options.shards(p)
    p.add_argument(
        "--model",
        required=True,
        help="open_clip architecture (ViT-L-14), an open_clip model-config .json, or timm:NAME "
        "for a timm image model (image embeddings only: no text embedding or clip_score)",
    )
    p.add_argument(
        "--weights",
        help="CLIP weights: path, fsspec URL or hf-hub:ORG/REPO[/FILE]; default: the "
        "architecture's pinned checkpoint; 'random' for benchmarks",
    )
    p.add_argument("--weights-sha256", help="pin --weights to this sha256")
    p.add_argument(
        "--aesthetic-weights",
        help="LAION improved aesthetic predictor state dict (URI), or 'none'; default: "
        "the pinned LAION file",
    )
    p.add_argument("--aesthetic-sha256", help="pin --aesthetic-weights to this sha256")
    p.add_argument(
        "--nsfw-weights",
        help="LAION CLIP-based NSFW detector as a PyTorch state dict (URI), or 'none'; default: "
        "NeMo Curator's file, clip_autokeras_binary_nsfw.pth from LAION's zip (no published "
        "digest: its sha256 is logged, pin it with --nsfw-sha256)",
    )
    p.add_argument("--nsfw-sha256", help="pin --nsfw-weights to this sha256")
    options.device(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per model batch")
    options.id_col(p)
    options.force(p, "annotate shards that are already done")
    p.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads on the CPU (default: from the cores, the model's FLOPs and "
        "the batch size; recorded in each annotation's metadata)",
    )
    p.add_argument(
        "--decode-threads",
        type=int,
        help="image decoders, processes on the CPU and DALI threads on a GPU (default: the "
        "cores torch leaves, plus one; changes no value)",
    )


def run(args: argparse.Namespace) -> Result:
    for flag in ("batch_size", "torch_threads", "decode_threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    options = Options(
        model=args.model,
        weights=args.weights,
        weights_sha256=args.weights_sha256,
        aesthetic_weights=args.aesthetic_weights,
        aesthetic_sha256=args.aesthetic_sha256,
        nsfw_weights=args.nsfw_weights,
        nsfw_sha256=args.nsfw_sha256,
        device=args.device,
        batch_size=args.batch_size,
        id_col=args.id_col,
        force=args.force,
        torch_threads=args.torch_threads,
        decode_threads=args.decode_threads,
    )
    return annotate_dataset(args.dataset, args.output, args.shards, options, manifest=args.manifest)
