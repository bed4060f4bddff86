"""Render the per-head [CLS] attention served by the vitscope TorchServe model: the command line.

    python client/render_attention.py data/samples/astronaut.jpg                 # ask the server
    python client/render_attention.py img1.jpg img2.png --layer 5 --mask 0.6 --save-heads
    python client/render_attention.py --from-file out/astronaut.json --image data/samples/astronaut.jpg
    python client/render_attention.py --from-file out/astronaut.npz --image data/samples/astronaut.jpg
    python client/render_attention.py a.jpg b.jpg --together --method pca --option pca_fit=joint
    python client/render_attention.py cat.jpg --method legrad --target 281 --faithfulness    # + deletion/insertion curves

Installed (``pip install ./client``), the same is the ``render-attention`` command. In a notebook::

    from vitscope_client import AttentionClient
    client = AttentionClient("http://127.0.0.1:8080", model="dino_vits8")
    client.describe()["methods"]       # what the server offers: methods, their options and outputs
    result = client.explain("cat.jpg", layer=11)
    result.figure(mask=0.6)            # a matplotlib Figure; the result itself also shows inline
    result.grid, result.meta           # (heads, H/p, W/p) maps and the server's metadata
    pair = client.explain_many(["a.jpg", "b.jpg"], method="pca", pca_fit="joint")
    pair.figure()                      # one row per image, in shared colours (one PCA basis)

Needs only requests, matplotlib, numpy and pillow, and nothing from the server's code; the picture
under each map is the original resized and cropped exactly as the server reports it did.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from .api import DEFAULT_HOST, DEFAULT_KEY_FILE, MANAGEMENT_PORT, AttentionClient, auth_headers, request_attention, request_many
from .draw import save_heads
from .errors import ClientError
from .mirrors import DEFAULT_MODEL, FORMATS, HEAD_FUSIONS, PRECISIONS, SERVER_OPTIONS, TIMEOUT_HEADER
from .response import OutputDescription, Responses, decode_body, image_bytes, parse_response
from .views import METHODS


def option_fields(args: argparse.Namespace) -> dict[str, str]:
    """Multipart fields for the server; the client upsamples itself, so maps travel as the patch grid."""
    fields = {"upsample": "false"}
    for name in (*SERVER_OPTIONS, "format"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = str(value)
    if args.faithfulness:
        fields["faithfulness"] = args.faithfulness
    return {**fields, **dict(args.options)}


def name_value(text: str) -> tuple[str, str]:
    """``--option reduce=max`` -> ("reduce", "max")."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE, e.g. --option head_fusion=max")
    return name.strip(), value


def render_one(
    image_path: Path, args: argparse.Namespace, url: str, headers: dict[str, str], outputs: Sequence[OutputDescription] | None = None
) -> Path:
    """Fetch (or load) one response and write its figure; returns the figure's path (``outputs``: as
    ``parse_response``'s)."""
    if args.from_file:
        try:
            doc = decode_body(args.from_file.read_bytes())
        except OSError as e:
            raise ClientError(f"cannot read {args.from_file}: {e.strerror}") from e
    else:
        doc = request_attention(url, image_path, option_fields(args), args.timeout, headers)
    att = parse_response(doc, outputs).with_image(image_path)
    out_dir = args.out or image_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = args.color_scale == "shared"
    fig = att.figure(cmap=args.cmap, shared_scale=shared, mask=args.mask, dpi=args.dpi, faithfulness=not args.no_faithfulness)
    target = out_dir / f"{image_path.stem}_attention.png"
    fig.savefig(target)
    if args.save_heads:
        assert att.image is not None
        save_heads(out_dir / image_path.stem, att.image, att, args.cmap, args.mask)
    if args.show:
        import matplotlib.pyplot as plt

        plt.figure(fig)  # hand the figure to pyplot's window manager
        plt.show()
    return target


def render_together(
    paths: Sequence[Path], args: argparse.Namespace, url: str, headers: dict[str, str], outputs: Sequence[OutputDescription] | None = None
) -> Path:
    """Send the images in one request and write one figure of them all; returns its path."""
    fields = option_fields(args)
    fields.pop("format", None)
    responses = Responses(request_many(url, [image_bytes(path) for path in paths], fields, args.timeout, headers, outputs))
    out_dir = args.out or paths[0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{paths[0].stem}_together.png"
    responses.figure(cmap=args.cmap, dpi=args.dpi).savefig(target)
    return target


def render_video(args: argparse.Namespace, url: str, key_file: Path | None) -> int:
    """--video: explain every frame and write the output video (and maps); exit status 0 or 1."""
    try:
        point = tuple(int(v) for v in args.point.split(",")) if args.point else None
        if point is not None and len(point) != 2:
            raise ValueError(args.point)
    except ValueError:
        print(f"error: --point {args.point!r} is not x,y (two integers)", file=sys.stderr)
        return 1
    server_options = {k: v for k, v in option_fields(args).items() if k in ("precision", *dict(args.options))}
    client = AttentionClient(url, key_file=key_file, timeout=args.timeout)
    options = {"method": args.method or "attention", "layer": args.layer, "head": args.head, "point": point, "every": args.every}
    options |= {"max_frames": args.max_frames, "short_side": args.short_side, "in_flight": args.in_flight, "mask": args.mask}
    options |= {"pca_fit": args.pca_fit, "cmap": args.cmap, "server_options": server_options}
    try:
        summary = client.explain_video(args.video, args.out, maps=args.maps, resume=args.resume, **options)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rate = f"{float(summary.fps):g}"
    print(f"wrote {summary.out}: {summary.frames} frames at {rate} fps, {summary.size[1]}x{summary.size[0]}, in {summary.seconds:.1f} s")
    return 0


def progress(done: int, total: int, label: str) -> None:
    width = 24
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="image file(s) to send to the server")
    parser.add_argument("--url", help=f"inference URL (default {DEFAULT_HOST}/predictions/<model>)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name in the default URL (dino_vits8, dino_vitb16, ...)")
    parser.add_argument(
        "--from-file",
        "--from-json",
        dest="from_file",
        type=Path,
        help="render a saved response (.json, .npz) instead of asking the server",
    )
    parser.add_argument("--image", type=Path, help="the image the --from-file response was made from")
    parser.add_argument("--describe", action="store_true", help="print what the server offers (methods, options, outputs) and exit")
    parser.add_argument("--management", help=f"management API for --describe (default: the server host, port {MANAGEMENT_PORT})")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--short-side", dest="short_side", type=int)
    parser.add_argument("--scale", type=float)
    parser.add_argument("--size", help="HxW")
    parser.add_argument("--heads", help="comma-separated head indices, e.g. 0,2")
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--layers", help="several blocks in one pass: all, or e.g. 0,5,11 (a layers x heads grid)")
    parser.add_argument(
        "--method", help=f"how to look: {', '.join(METHODS)} or any other the server describes (--describe); default attention"
    )
    parser.add_argument("--head-fusion", dest="head_fusion", choices=HEAD_FUSIONS, help="rollout: how heads combine (mean)")
    parser.add_argument("--discard-ratio", dest="discard_ratio", type=float, help="rollout: share of each row discarded, in [0, 1)")
    parser.add_argument(
        "--mask",
        "--threshold",
        dest="mask",
        type=float,
        help="DINO's masks keeping this fraction of each map's mass, in (0, 1] (e.g. 0.6): the server's, or for a saved "
        "response without them the client's own",
    )
    parser.add_argument("--boxes", action="store_const", const="true", help="with --mask: each mask's largest component as a box")
    parser.add_argument(
        "--registers",
        action="store_const",
        const="true",
        help="DINOv2 *_reg / DINOv3: each map's share on the register tokens, in its title",
    )
    parser.add_argument(
        "--option",
        dest="options",
        type=name_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other server option, e.g. a method's own (repeatable; --describe lists them)",
    )
    parser.add_argument("--point", help="method=similarity: x,y, a pixel of the processed image (its image_size frame)")
    parser.add_argument("--query", help="the token the maps are of: cls, distillation (DeiT's distilled models) or probe (SigLIP)")
    parser.add_argument("--top-k", dest="top_k", type=int, help="predictions: the top classes (0: none; default: the server's, 5)")
    parser.add_argument("--labels", help="CLIP/SigLIP: texts to score the image against, separated by '|' (zero-shot)")
    parser.add_argument(
        "--target",
        help="method=legrad|chefer|gradcam: what the map explains: top, a class index or label, text:<prompt>, embedding; several "
        "separated by '|'",
    )
    parser.add_argument(
        "--faithfulness",
        nargs="?",
        const="deletion,insertion",
        metavar="METRICS",
        help="ask the server how faithful the map is: deletion, insertion or both (the default), drawn as curves beside the maps",
    )
    parser.add_argument(
        "--no-faithfulness",
        dest="no_faithfulness",
        action="store_true",
        help="leave out the faithfulness curves an answer holds (e.g. a saved one) from the figure",
    )
    parser.add_argument("--format", choices=FORMATS, help="response format to ask for (default: the server's)")
    parser.add_argument("--cmap", default="inferno")
    parser.add_argument("--color-scale", choices=("per-head", "shared"), default="per-head")
    parser.add_argument("--out", type=Path, help="output folder (default: next to each image)")
    parser.add_argument("--save-heads", action="store_true", help="also write one PNG per head (and per mask)")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    parser.add_argument(
        "--key-file", type=Path, help="TorchServe key_file.json when token auth is on (default: ./key_file.json if present)"
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="send the images in one request and draw them in one figure, on one colour scale (e.g. with "
        "--method pca --option pca_fit=joint, or --method similarity --point x,y of the first image)",
    )
    parser.add_argument("--show", action="store_true", help="open a window (otherwise headless)")
    video = parser.add_argument_group("videos (--video IN --out OUT.mp4; needs PyAV: pip install './client[video]')")
    video.add_argument("--video", type=Path, help="a video to explain frame by frame; --out is then the output video")
    video.add_argument("--maps", type=Path, help="also write the per-frame maps on the patch grid, [frames, ...] float16 (.npz/.npy)")
    video.add_argument("--head", default="mean", help="attention: the heads' mean (default) or one head's index")
    video.add_argument("--every", type=int, default=1, help="every N-th frame (the output's rate is divided by N)")
    video.add_argument("--max-frames", dest="max_frames", type=int, help="at most this many frames")
    video.add_argument("--in-flight", dest="in_flight", type=int, default=4, help="requests in flight at once (default 4)")
    video.add_argument(
        "--pca-fit", dest="pca_fit", choices=("first", "sample"), default="first", help="pca: the basis of the first frame, or of a sample"
    )
    video.add_argument("--resume", action="store_true", help="go on from the maps a stopped run kept in <maps>.partial")
    args = parser.parse_args(argv)
    if args.describe:
        return args
    if args.video:
        if args.images or args.from_file or args.together or not args.out:
            parser.error("--video takes --out OUT.mp4 and no images, --from-file or --together")
        if args.resume and not args.maps:
            parser.error("--resume goes on from --maps: give the same --maps as the stopped run")
        return args
    if args.from_file and (args.images or not args.image):
        parser.error("--from-file takes exactly one --image and no positional images")
    if not args.from_file and (args.image or not args.images):
        parser.error("give image path(s), or --from-file resp.json --image img.jpg")
    if args.together and (args.from_file or args.format not in (None, "json") or args.save_heads):
        parser.error("--together sends images (no --from-file) and reads a JSON answer (no --format, no --save-heads)")
    if args.mask is not None and not 0 < args.mask <= 1:
        parser.error("--mask must be in (0, 1], e.g. 0.6")
    if args.cmap not in matplotlib.colormaps:
        parser.error(f"unknown colormap {args.cmap!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not args.show:
        matplotlib.use("Agg")
    images = [args.image] if args.from_file else args.images
    url = args.url or f"{DEFAULT_HOST}/predictions/{args.model}"
    key_file = args.key_file or (DEFAULT_KEY_FILE if DEFAULT_KEY_FILE.is_file() else None)
    try:
        headers = {**auth_headers(key_file), TIMEOUT_HEADER: f"{args.timeout:g}"}
        client = AttentionClient(url, key_file=key_file, timeout=args.timeout, management=args.management)
        if args.describe:
            print(json.dumps(client.describe(), indent=2))
            return 0
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.video:
        return render_video(args, url, key_file)
    outputs = None if args.from_file else client.outputs_of(args.method)  # a method the client has no view for: as described
    if args.together:
        try:
            target = render_together(images, args, url, headers, outputs)
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"rendered {len(images)} image(s) together: {target}")
        return 0
    written, failed = [], 0
    for n, path in enumerate(images, 1):
        try:
            written.append(render_one(path, args, url, headers, outputs))
        except ClientError as e:
            failed += 1
            if len(images) > 1:
                sys.stderr.write("\n")
            print(f"error: {e}", file=sys.stderr)
        if len(images) > 1:
            progress(n, len(images), path.name)
    if len(images) > 1 or written:
        summary = f"rendered {len(written)}/{len(images)} image(s)"
        print(summary + (f": {written[0]}" if len(written) == 1 else "") + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
