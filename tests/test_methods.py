"""More than the last layer: every layer in one pass, exact attention rollout in linear memory,
server-side masks and boxes, in every response format."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import numpy as np
import orjson
import pytest
import torch

from scripts import REPO
from testkit.checkpoints import TINY, backbone_state, brightness_seeking_state, encode, random_rgb
from testkit.handler import answer
from tests.support.services import tiny_service
from vitscope.masks import boxes_of, encode_masks, largest_component_box, threshold_masks
from vitscope.model.checkpoint import build_model
from vitscope.model.rollout import GPU_SCORE_BYTES, HEAD_FUSIONS, ROW_CHUNK, cls_rollout, rollout_reference, row_chunk
from vitscope.service import AttentionService
from vitscope_client.mirrors import decode_masks


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_model(TINY, backbone_state(seed=11))


def service_of(model: torch.nn.Module) -> AttentionService:
    return tiny_service(model=model, short_side=64)


def doc(reply) -> dict:
    assert reply.status == 200, reply.body
    return orjson.loads(reply.body)


# ----------------------------------------------------------------------------- rollout is exact
@pytest.mark.parametrize("size", [(64, 64), (48, 112)])
@pytest.mark.parametrize("head_fusion", HEAD_FUSIONS)
@pytest.mark.parametrize("discard_ratio", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("layer", [0, 5, 11])
def test_rollout_equals_the_full_matrix_product(tiny, size, head_fusion: str, discard_ratio: float, layer: int) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(layer))
    ours = cls_rollout(tiny, x, layer, head_fusion, discard_ratio, chunk=5)  # several chunks, the last partial
    naive = rollout_reference(tiny, x, layer, head_fusion, discard_ratio)
    assert ours.shape == naive.shape == (2, 1 + (size[0] // 16) * (size[1] // 16))
    assert ((ours - naive).abs().amax(dim=1) / naive[:, 1:].abs().amax(dim=1)).max() < 1e-5
    torch.testing.assert_close(ours.sum(dim=1), torch.ones(2))  # e_0^T R: R's rows sum to 1


def test_rollout_chunk_per_device(tiny) -> None:
    """A GPU rebuilds as many rows at a time as its score budget holds (all of them for small images):
    the answer is the same as the CPU's 32-row chunks."""
    assert row_chunk(torch.device("cpu"), 1, 6, 3601) == ROW_CHUNK
    assert row_chunk(torch.device("cuda"), 1, 6, 3601) == GPU_SCORE_BYTES // (4 * 6 * 3601) > 3601  # every row at once
    assert ROW_CHUNK < row_chunk(torch.device("cuda"), 1, 6, 32401) < 32401  # 1080x1920 at patch 8: in chunks
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    whole = cls_rollout(tiny, x, 11, "max", 0.3, chunk=10_000)
    torch.testing.assert_close(whole, cls_rollout(tiny, x, 11, "max", 0.3), rtol=1e-5, atol=1e-7)


def test_reference_follows_the_stated_definition(tiny) -> None:
    """rollout_reference itself, for one block with discard, against the definition written out here."""
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        blk = tiny.blocks[0]
        weights, _ = blk.attn.explicit_weights(blk.norm1(tiny.prepare_tokens(x)[0]))  # (1, heads, N, N)
    fused, n = weights[0].max(dim=0).values.clone(), weights.shape[-1]  # (N, N), max fusion
    k = int(0.5 * (n - 1))
    for row in fused:
        weakest = torch.argsort(row[1:])[:k] + 1  # never column 0
        row[weakest] = 0
    fused += torch.eye(n)
    expected = (fused / fused.sum(dim=1, keepdim=True))[0]
    torch.testing.assert_close(rollout_reference(tiny, x, 0, "max", 0.5)[0], expected)


def uniform_after_block0_state() -> dict[str, torch.Tensor]:
    """Every token attends to bright patches in block 0; blocks 1..11 attend uniformly (no query)."""
    state = brightness_seeking_state()
    dim, head_dim = TINY.embed_dim, TINY.embed_dim // TINY.num_heads
    qkv, bias = state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.bias"]
    qkv[:dim], bias[:dim] = 0, 0
    for h in range(TINY.num_heads):
        bias[h * head_dim] = 20.0  # a constant query that meets the keys' brightness dimension
    for b in range(1, TINY.depth):
        state[f"blocks.{b}.attn.qkv.weight"][:dim] = 0
        state[f"blocks.{b}.attn.qkv.bias"][:dim] = 0
    return state


def test_rollout_finds_what_the_last_layer_does_not() -> None:
    image = np.zeros((96, 160, 3), np.uint8)
    image[32:64, 96:128] = 255  # a bright 2x2-patch square, off centre, on a black non-square image
    service = service_of(build_model(TINY, uniform_after_block0_state()))
    rows = [{"data": encode(image), "scale": "1", "upsample": "false", **extra} for extra in ({}, {"method": "rollout"})]
    last, rollout = (doc(r) for r in answer(service, rows))
    last_maps, rollout_map = np.asarray(last["attention"]), np.asarray(rollout["attention"])[0]  # (heads, 6, 10), (6, 10)
    assert np.ptp(last_maps) < 1e-6  # the last layer attends uniformly: it shows nothing
    square = np.zeros((6, 10), bool)
    square[2:4, 6:8] = True
    assert rollout_map[square].min() > 10 * rollout_map[~square].max()
    assert rollout_map[square].sum() > 5 * square.mean() * rollout_map.sum()  # 4 of 60 patches: over 5x their share
    assert (rollout["method"], rollout["head_fusion"], rollout["discard_ratio"], rollout["layer"]) == ("rollout", "mean", 0.0, 11)


def peak_rss_mb(sides: tuple[int, ...], depth: int = 4) -> list[float]:
    """Peak RSS growth (MB) of one rollout of each side x side image, in one fresh process (vit_tiny/16's
    width and heads, ``depth`` blocks: the memory is per token; the depth only adds the kept O(N)
    queries and keys). Linux's peak RSS (VmHWM) is reset before each rollout (/proc/self/clear_refs)."""
    code = (
        "import dataclasses, sys, torch; sys.path.insert(0, '.'); "
        "from vitscope.model.checkpoint import build_model; from vitscope.model.variants import get_variant; "
        "from vitscope.model.rollout import cls_rollout; torch.manual_seed(0); "
        f"m = build_model(dataclasses.replace(get_variant('vit_tiny', 16), depth={depth}), None)\n"
        "cls_rollout(m, torch.randn(1, 3, 64, 64))\n"
        "def status(key): return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key + ':'))\n"
        f"for side in {list(sides)}:\n"
        "    open('/proc/self/clear_refs', 'w').write('5'); before = status('VmRSS')\n"
        "    cls_rollout(m, torch.randn(1, 3, side, side))\n"
        "    print((status('VmHWM') - before) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    return [float(line) for line in out.stdout.strip().splitlines()[-len(sides) :]]


def test_rollout_memory_grows_linearly_in_tokens() -> None:
    small, large = peak_rss_mb((512, 1024))  # 1,024 and 4,096 patch tokens
    naive_mb = (2 * TINY.num_heads + 4) * 4097**2 * 4 / 2**20  # the naive rollout's N x N matrices at 4,096 tokens: 640 MB
    assert large < naive_mb / 3, (small, large)
    assert large < 6 * max(small, 5.0), (small, large)  # 4x the tokens: linear ~4x, quadratic ~16x


# ----------------------------------------------------------------------------- layers
def test_all_layers_in_one_pass_equal_the_per_layer_requests(tiny) -> None:
    service = service_of(tiny)
    data = encode(random_rgb(64, 80, seed=4))
    every = doc(answer(service, [{"data": data, "layers": "all", "upsample": "false"}])[0])
    attention = np.asarray(every["attention"])
    assert attention.shape == (12, 3, 4, 5) and every["layers"] == list(range(12)) and every["layer"] == 11
    singles = answer(service, [{"data": data, "layer": str(b), "upsample": "false"} for b in range(12)])
    for b, reply in enumerate(singles):
        np.testing.assert_array_equal(attention[b], np.asarray(doc(reply)["attention"]))
    some = doc(answer(service, [{"data": data, "layers": "11,0,5", "heads": "2", "upsample": "false"}])[0])
    assert some["layers"] == [0, 5, 11] and np.asarray(some["attention"]).shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(np.asarray(some["attention"])[:, 0], attention[[0, 5, 11], 2])


def test_layers_run_one_forward_to_the_deepest(tiny, monkeypatch) -> None:
    ran = []
    for i, blk in enumerate(tiny.blocks):
        monkeypatch.setattr(blk, "forward", lambda x, explicit=False, i=i, f=blk.forward: ran.append(i) or f(x, explicit))
    answer(service_of(tiny), [{"data": encode(random_rgb(32, 32)), "layers": "1,4"}])
    assert ran == [0, 1, 2, 3]  # blocks after 4 never run; block 4 computes only its [CLS] row


# ----------------------------------------------------------------------------- masks and boxes
def test_masks_hold_the_stated_mass() -> None:
    maps = np.random.default_rng(0).random((2, 3, 7, 9)).astype(np.float32)
    for t in (0.1, 0.6, 1.0):
        masks = threshold_masks(maps, t)
        for m, mask in zip(maps.reshape(-1, 7, 9), masks.reshape(-1, 7, 9), strict=True):
            kept, total = m[mask].sum(), m.sum()
            assert kept / total >= t - 1e-6 and (kept - m[mask].min()) / total < t
            assert (~mask).sum() == 0 if t == 1.0 else m[mask].min() >= m[~mask].max()


def test_mask_encoding_round_trips() -> None:
    masks = np.random.default_rng(1).random((2, 3, 5, 7)) > 0.5
    encoded = encode_masks(masks)
    assert encoded["shape"] == [2, 3, 5, 7] and encoded["encoding"] == "packbits"
    assert len(base64.b64decode(encoded["data"])) == 6 * 5  # ceil(35 / 8) bytes per map
    np.testing.assert_array_equal(decode_masks(encoded), masks)


def test_box_is_the_largest_8_connected_component() -> None:
    mask = np.zeros((6, 8), bool)
    mask[0, 0] = True  # a single patch
    mask[2, 3], mask[3, 4], mask[4, 5], mask[4, 4] = True, True, True, True  # diagonal steps: 8-connected
    assert largest_component_box(mask, 16) == [3 * 16, 2 * 16, 6 * 16, 5 * 16]
    assert boxes_of(mask[None], 14).tolist() == [[42, 28, 84, 70]]


def test_masks_and_boxes_in_every_format(tiny) -> None:
    image = np.zeros((96, 160, 3), np.uint8)
    image[32:64, 96:128] = 255
    service = service_of(build_model(TINY, brightness_seeking_state()))
    base = {"data": encode(image), "scale": "1", "layer": "0", "mask": "0.9", "boxes": "true"}
    v2_input = {"name": "i", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(base["data"]).decode()]}
    v2 = {"body": {"inputs": [v2_input], "parameters": {k: v for k, v in base.items() if k != "data"}}}
    v1 = {"body": {"instances": [{**{k: v for k, v in base.items() if k != "data"}, "data": v2_input["data"][0]}]}}
    as_json, as_npz, as_v2, as_v1 = answer(service, [base, {**base, "format": "npz", "upsample": "false"}, v2, v1])
    document = doc(as_json)
    masks, boxes = decode_masks(document["masks"]), np.asarray(document["boxes"])
    assert masks.shape == (3, 6, 10) and document["mask"] == 0.9
    assert boxes.tolist() == [[96, 32, 128, 64]] * 3  # the bright square, in image pixels, for every head
    with np.load(io.BytesIO(as_npz.body), allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["masks"], masks)
        np.testing.assert_array_equal(archive["boxes"], boxes)
        assert orjson.loads(str(archive["meta"]))["mask"] == 0.9
    outputs = {o["name"]: o for o in doc(as_v2)["outputs"]}
    assert outputs["masks"]["datatype"] == "BOOL" and outputs["masks"]["shape"] == [3, 6, 10]
    np.testing.assert_array_equal(np.asarray(outputs["masks"]["data"]).reshape(3, 6, 10), masks)
    assert outputs["boxes"]["datatype"] == "INT32" and outputs["boxes"]["data"] == boxes.ravel().tolist()
    (prediction,) = doc(as_v1)["predictions"]
    np.testing.assert_array_equal(decode_masks(prediction["masks"]), masks)
    assert prediction["boxes"] == boxes.tolist() and prediction["mask"] == 0.9


def test_masks_with_layers_and_rollout(tiny) -> None:
    data = encode(random_rgb(64, 96, seed=2))
    layers, rollout = (
        doc(r)
        for r in answer(
            service_of(tiny),
            [
                {"data": data, "layers": "0,11", "mask": "0.6", "boxes": "1", "upsample": "false"},
                {"data": data, "method": "rollout", "head_fusion": "min", "discard_ratio": "0.2", "mask": "0.6", "upsample": "false"},
            ],
        )
    )
    np.testing.assert_array_equal(decode_masks(layers["masks"]), threshold_masks(np.asarray(layers["attention"]), 0.6))
    assert np.asarray(layers["boxes"]).shape == (2, 3, 4)
    assert decode_masks(rollout["masks"]).shape == (1, 4, 6) and "boxes" not in rollout
    assert (rollout["head_fusion"], rollout["discard_ratio"]) == ("min", 0.2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"layers": "0,99"}, "layers='0,99': layer=99 is out of range"),
        ({"layers": "a,b"}, "layers='a,b'"),
        ({"layers": "0,5", "layer": "3"}, "give layer=N .* or layers=.* not both"),
        ({"method": "occlusion"}, "method='occlusion' is not one of"),
        ({"method": "rollout", "head_fusion": "median"}, "head_fusion='median' is not one of"),
        ({"method": "rollout", "discard_ratio": "1"}, r"discard_ratio='1' must be a number in \[0, 1\)"),
        ({"method": "rollout", "discard_ratio": "-0.1"}, "discard_ratio"),
        ({"mask": "0"}, r"mask='0' must be a number in \(0, 1\]"),
        ({"mask": "1.5"}, "mask='1.5'"),
        ({"method": "rollout", "heads": "0"}, "heads does not apply to method=rollout"),
        ({"method": "rollout", "layers": "all"}, "method=rollout returns one map"),
        ({"head_fusion": "max"}, "head_fusion applies to method=rollout only"),
        ({"discard_ratio": "0.5"}, "discard_ratio applies to method=rollout only"),
        ({"boxes": "true"}, "boxes=true needs mask=t"),
        ({"mask": "0.6", "format": "npy"}, "format=npy carries one array"),
    ],
)
def test_bad_combinations_are_400s_naming_the_option(tiny, options: dict, message: str) -> None:
    (reply,) = answer(service_of(tiny), [{"data": encode(random_rgb(32, 32)), **options}])
    assert reply.status == 400
    assert re.search(message, orjson.loads(reply.body)["error"]), reply.body
