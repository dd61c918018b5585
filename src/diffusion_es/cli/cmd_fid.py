"""``diffusion-es fid`` (Fréchet distance + precision/recall of samples against a reference) and
``diffusion-es fid-ref`` (make a reference statistics file with provenance)."""

from __future__ import annotations

import sys

from ..errors import UsageError
from .common import add_progress_arg, add_threads_arg, int_in, job_progress, print_json

METRIC_NAME = {"digits": "FD-digits", "mnist": "FD-mnist", "inception": "FID"}


def _add_feature_opts(p, default_help: str) -> None:
    p.add_argument("--features", choices=["digits", "mnist", "inception"], default=None, help=default_help)
    p.add_argument("--inception", metavar="PATH", default=None,
                   help="Inception-v3 TorchScript file for --features inception (or env DIFFUSION_ES_INCEPTION); "
                        "TorchScript is code: use a file you trust. Get one with scripts/get_inception.sh")
    p.add_argument("--feature-weights", metavar="PATH", default=None,
                   help="classifier weights (.safetensors) for --features digits/mnist instead of the shipped ones")
    p.add_argument("--batch-size", type=int_in(0, 1_000_000), default=0,
                   help="images per feature batch (default 0: the network's own)")
    add_threads_arg(p)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fid", help="Fréchet distance and precision/recall of samples against reference statistics",
        description="FD of SAMPLES (ADM-style .npz or a folder of PNGs) against REF (made by `fid-ref`). The feature "
                    "network defaults to the reference's; asking for another one is refused.")
    p.add_argument("samples", metavar="SAMPLES", help="ADM-style .npz (uint8 NHWC under arr_0) or a folder of PNGs")
    p.add_argument("--ref", required=True, metavar="REF", help="reference statistics .npz from `diffusion-es fid-ref`")
    p.add_argument("--k", type=int_in(1, 100_000), default=3, help="k of the k-NN precision/recall (default 3)")
    p.add_argument("--no-pr", action="store_true", help="skip precision/recall")
    p.add_argument("--method", choices=["sqrtm", "eig"], default="sqrtm",
                   help="matrix square root: scipy sqrtm (default, as FID papers) or a symmetric eigendecomposition "
                        "(same value to ~1e-10, ~5x faster at 2048-d)")
    _add_feature_opts(p, "feature network (default: the one the reference was made with)")
    p.set_defaults(func=run_fid)

    q = subparsers.add_parser(
        "fid-ref", help="compute reference feature statistics (with provenance) for `fid`",
        description="Reference statistics of a dataset split, or of images in an .npz / PNG folder.")
    q.add_argument("--data", required=True, metavar="DATA",
                   help="digits, mnist:PATH (mnist.pkl.gz / IDX folder), npz:PATH, or a path to an ADM-style .npz "
                        "or folder of PNGs (the --data specs of `train`)")
    q.add_argument("--split", default=None, choices=["train", "heldout", "all"],
                   help="split (default train): digits 1437/360; MNIST train 60k / heldout = the 10k test set; "
                        "a plain image file has only train (= all)")
    q.add_argument("--out", required=True, metavar="REF.npz", help="output reference file (written atomically)")
    q.add_argument("--keep-features", type=int_in(0, 10_000_000), default=10000,
                   help="store the features of the first N images for precision/recall (default 10000; 0: none)")
    _add_feature_opts(q, "feature network (default: digits for 8x8 images, mnist for 28x28, else inception)")
    q.set_defaults(func=run_fid_ref)


def _extractor(args, name):
    from ..metrics.features import get_extractor

    ex = get_extractor(name, inception_path=args.inception, weights=args.feature_weights)
    if args.batch_size:
        ex.batch_size = args.batch_size
    return ex


def _load_data(args):
    """(uint8 NHWC images, dataset name, split) from a --data spec of :func:`diffusion_es.data.load_dataset`."""
    from ..io import to_uint8

    split = args.split or "train"
    if args.data == "digits":
        from ..data import load_digits

        return to_uint8(load_digits(split)), "digits", split
    from ..data import load_dataset

    ds = load_dataset(args.data)
    if len(ds.shape) != 3:
        raise UsageError(f"--data {args.data}: not images (shape {ds.shape}); for 2-D toys use "
                         "diffusion_es.metrics.toy (MMD, sliced Wasserstein)")
    if split == "heldout" and ds.heldout is None:
        raise UsageError(f"--data {args.data}: has no held-out split; use --split train (all its images)")
    import torch

    x = {"train": ds.train, "heldout": ds.heldout,
         "all": ds.train if ds.heldout is None else torch.cat([ds.train, ds.heldout])}[split]
    name = "mnist" if ds.description.get("name") == "mnist" else str(args.data)
    return to_uint8(x), name, ("all" if ds.heldout is None else split)


def _auto_features(images) -> str:
    side = images.shape[1]
    return {8: "digits", 28: "mnist"}.get(side, "inception")


def run_fid_ref(args) -> int:
    from ..distributed import session
    from ..io import check_output
    from ..store import output_lock

    check_output(args.out, "file", (".npz",), command="fid-ref")
    with session() as ctx, output_lock(args.out, enabled=ctx.is_main):  # one writer per reference file
        return _run_fid_ref(args, ctx)


def _run_fid_ref(args, ctx) -> int:
    from ..metrics.quality import check_native_size
    from ..metrics.sharded import extract_stats
    from ..metrics.reference import grey_channel, save_reference

    images, dataset, split = _load_data(args)
    images = grey_channel(images)[0]
    if len(images) < 2:
        raise UsageError(f"{args.data}: need at least 2 images for a covariance, found {len(images)}")
    ex = _extractor(args, args.features or _auto_features(images))
    check_native_size(ex, images.shape[1:3], f"--data {args.data}")
    with job_progress(args, f"{ex.name} features", "img", show=ctx.is_main):
        stats, kept = extract_stats(ctx, ex, images, keep_features=args.keep_features, desc=f"{ex.name} features")
    if not ctx.is_main:
        return 0
    prov = save_reference(args.out, stats, ex, dataset, split, features=kept, image_shape=images.shape[1:])
    if args.json:
        print_json({"out": str(args.out), **prov})
    else:
        print(f"wrote {args.out}: {dataset} {split}, {stats.n} images, {ex.name} features "
              f"(weights {ex.weights_hash[:12]}){', ' + str(len(kept)) + ' kept for precision/recall' if kept is not None else ''}")
    return 0


def run_fid(args) -> int:
    from ..distributed import session

    with session() as ctx:  # one process, or one rank of a torchrun launch
        return _run_fid(args, ctx)


def _run_fid(args, ctx) -> int:
    from ..metrics.sharded import extract_stats
    from ..io import load_images
    from ..metrics.frechet import frechet_distance
    from ..metrics.prdc import precision_recall
    from ..metrics.reference import check_features, check_images, grey_channel, load_reference

    ref = load_reference(args.ref)
    if args.features and args.features != ref.feature_name:
        raise UsageError(f"{args.ref}: reference was made with the {ref.feature_name!r} feature network, not "
                         f"{args.features!r}; drop --features or make a new reference with `diffusion-es fid-ref "
                         f"--features {args.features}`")
    ex = _extractor(args, args.features or ref.feature_name)
    check_features(ref, ex)
    images, stored_rgb = grey_channel(load_images(args.samples))
    if len(images) < 2:
        raise UsageError(f"{args.samples}: need at least 2 images, found {len(images)}")
    check_images(ref, ex, images.shape[1:], what=str(args.samples), stored_rgb=stored_rgb)
    want_pr = not args.no_pr and ref.features is not None
    keep = len(ref.features) if want_pr else 0
    if want_pr and min(len(images), keep) <= args.k:
        raise UsageError(f"precision/recall with --k {args.k} needs more than {args.k} images per set, have "
                         f"{min(len(images), keep)}; lower --k or pass --no-pr")
    with job_progress(args, f"{ex.name} features", "img", show=ctx.is_main):
        stats, kept = extract_stats(ctx, ex, images, keep_features=keep, desc=f"{ex.name} features")
    if not ctx.is_main:
        return 0
    fd = frechet_distance(stats, ref.stats, method=args.method)
    prov = ref.provenance
    few = [f"{n} {what}" for n, what in ((stats.n, "samples"), (ref.stats.n, "reference images")) if n <= stats.dim]
    if few:  # allowed (a quick look), but the number means little: said once, on stderr
        print(f"note: {' and '.join(few)} for {stats.dim}-d features: a covariance from no more vectors than "
              f"dimensions is singular and FD is biased far upward at this size; compare FDs only at equal counts, "
              f"of more than {stats.dim} (papers use 50,000 samples with Inception)", file=sys.stderr)
    out = {"metric": METRIC_NAME[ex.name], "fd": fd, "fd_method": args.method, "samples": str(args.samples), "n_samples": stats.n,
           "reference": {"path": str(args.ref), "dataset": prov["dataset"], "split": prov["split"],
                         "count": prov["count"]},
           "features": {"name": ex.name, "weights_sha256": ex.weights_hash}}
    if want_pr:
        n = min(len(kept), len(ref.features))
        if n <= args.k:
            raise UsageError(f"precision/recall with k={args.k} needs more than {args.k} images per set, have {n}")
        out.update(precision_recall(ref.features[:n], kept[:n], k=args.k))
    if args.json:
        print_json(out)
    else:
        print(f"{out['metric']} {fd:.4f}  ({stats.n} samples vs {prov['dataset']} {prov['split']}, "
              f"{prov['count']} images)")
        if want_pr:
            print(f"precision {out['precision']:.4f}  recall {out['recall']:.4f}  (k={args.k}, {out['n_real']} vs "
                  f"{out['n_fake']})")
        elif not args.no_pr:
            print("precision/recall skipped: the reference stores no features (fid-ref --keep-features)",
                  file=sys.stderr)
    return 0
