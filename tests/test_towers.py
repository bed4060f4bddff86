"""The ViTs people deploy, read by ``vitscope/model/towers.py`` through ``sources.load_checkpoint``:
transformers directories (ViT, DeiT, CLIP, SigLIP, DINOv2 classifiers), timm state dicts
(``MODEL=timm:<name>``) and open_clip state dicts (``MODEL=open_clip:<config>``).

Tiny random models are made by each library and saved as it saves them (nothing is downloaded);
in fp32 every layer's attention row of the pooling query ([CLS], DeiT's distillation token, SigLIP's
probe), the pooled embeddings, the logits and the zero-shot scores equal the library's own forward
pass to 1e-5, on square and non-square images and on a grid other than the checkpoint's (open_clip
has no run-time position resize: its models are compared at their own grid).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.support.references import captured, timm_attention
from vitscope.model.checkpoint import CheckpointError, build_model, check_state_dict
from vitscope.model.sources import Loaded, base_from_spec, load_checkpoint
from vitscope.model.tokenizer import OPENCLIP_BPE
from vitscope.model.towers import open_clip_bpe, tower_state
from vitscope.model.variants import Variant, variant_from_mapping, variant_to_mapping
from vitscope.model.vit import VisionTransformer

pytestmark = pytest.mark.unit

transformers = pytest.importorskip("transformers", reason="transformers is pinned in requirements.txt: make install")
timm = pytest.importorskip("timm", reason="timm is pinned in requirements.txt: make install")
open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is pinned in requirements.txt: make install")
from safetensors.torch import save_file  # noqa: E402 (after the importorskip)
from timm.models import build_model_with_cfg, register_model  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

logger = logging.getLogger(__name__)

TOL = {"atol": 1e-5, "rtol": 1e-5}
GRID, PATCH = 4, 8  # the checkpoints' 4x4 grid of 8-pixel patches (32 x 32 images)
SIZES = [(32, 32), (24, 40), (48, 40)]  # the checkpoint's grid, non-square, another grid
VISION = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "image_size": 32, "patch_size": 8}
TEXT = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 64}
TEXT |= {"max_position_embeddings": 12, "eos_token_id": 63, "bos_token_id": 62, "pad_token_id": 0}  # EOT: the vocabulary's last id
LABELS = {0: "cat", 1: "dog", 2: "car"}
MAX_DIFFS: dict[str, float] = {}  # what each comparison measured, logged at the end (pytest -o log_cli=true)


@pytest.fixture(scope="module", autouse=True)
def report_differences() -> Iterator[None]:
    yield
    for what, diff in sorted(MAX_DIFFS.items()):
        logger.info("max |ours - theirs| %-40s %.2e", what, diff)


def same(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """ours == theirs to 1e-5 (fp32), the largest difference recorded under ``what``."""
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = float((ours.float() - theirs.float()).abs().max())
    MAX_DIFFS[what] = max(MAX_DIFFS.get(what, 0.0), diff)
    torch.testing.assert_close(ours.float(), theirs.float(), **TOL)


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter moved off its init (norms, zero biases, zero tokens): every tensor counts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def image(size: tuple[int, int], seed: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed + size[0] * size[1]))


def clip_ids(count: int, length: int, vocab: int, seed: int = 3) -> torch.Tensor:
    """Random token ids below the end-of-text (vocab - 1), each text with one at its own position."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 2, (count, length), generator=generator)
    ids[torch.arange(count), torch.randint(1, length, (count,), generator=generator)] = vocab - 1
    return ids


def served(loaded: Loaded) -> VisionTransformer:
    """Our model as the archive serves it: the loaded state through the same strict build."""
    assert variant_from_mapping(variant_to_mapping(loaded.variant)) == loaded.variant  # what the archive records, read back
    return build_model(loaded.variant, loaded.state)


def rows(model: VisionTransformer, x: torch.Tensor, query: str | None = None) -> torch.Tensor:
    with torch.inference_mode():
        return model.get_cls_attention_layers(x, list(range(model.depth)), query=query)  # (B, layers, heads, N)


# ----------------------------------------------------------------------------- transformers
def hf_saved(model: nn.Module, folder: Path) -> nn.Module:
    """``model`` perturbed, saved with save_pretrained into ``folder``, set to eager attention (its weights)."""
    perturbed(model).save_pretrained(folder)
    model.set_attn_implementation("eager")
    return model


def hf_rows(attentions: tuple[torch.Tensor, ...], index: int = 0) -> torch.Tensor:
    return torch.stack([a[:, :, index] for a in attentions], dim=1)  # (B, layers, heads, N)


VIT_KINDS: dict[str, Callable[[], nn.Module]] = {
    "ViTForImageClassification": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(**VISION, id2label=LABELS)),
    "ViTModel": lambda: transformers.ViTModel(transformers.ViTConfig(**VISION)),
    "DeiTForImageClassificationWithTeacher": lambda: transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(**VISION, id2label=LABELS)
    ),
    "DeiTForImageClassification": lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(**VISION, id2label=LABELS)),
    "DeiTModel": lambda: transformers.DeiTModel(transformers.DeiTConfig(**VISION)),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", list(VIT_KINDS))
def test_transformers_vit_and_deit(tmp_path: Path, kind: str, size: tuple[int, int]) -> None:
    """Every layer's [CLS] row (DeiT: and the distillation token's), and the logits (classifiers:
    DeiT's teacher model averages both heads) or the normed [CLS] (base models, whose pooler is dropped)."""
    reference = hf_saved(VIT_KINDS[kind](), tmp_path)
    loaded = load_checkpoint(tmp_path, None, name="tower")
    model = served(loaded)
    classifier = "ForImageClassification" in kind
    assert loaded.source.startswith("huggingface vit" if kind.startswith("ViT") else "huggingface deit")
    assert loaded.labels == (("cat", "dog", "car") if classifier else ())
    assert (loaded.variant.num_classes, loaded.variant.eps) == (3 if classifier else 0, 1e-12) and "pooler.dense.weight" not in loaded.state
    x = image(size)
    with torch.inference_mode():
        out = reference(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
        normed = model.final_tokens(x)
        same(f"{kind} [CLS] rows", rows(model, x), hf_rows(out.attentions))
        if kind.startswith("DeiT"):
            same(f"{kind} distillation rows", rows(model, x, "distillation"), hf_rows(out.attentions, 1))
        if classifier:
            same(f"{kind} logits", model.logits(normed), out.logits)
        else:
            same(f"{kind} tokens", normed, out.last_hidden_state)


def test_transformers_in_memory_names(tmp_path: Path) -> None:
    """A torch.save'd state_dict() of transformers 5 (``vit.layers.0.attention.q_proj``, ``mlp.fc1``:
    not what save_pretrained writes) as pytorch_model.bin."""
    reference = hf_saved(VIT_KINDS["ViTForImageClassification"](), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    state = reference.state_dict()
    assert any(".layers.0.attention.q_proj." in k for k in state)
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = load_checkpoint(tmp_path, None)
    assert loaded.source == "huggingface vit (pytorch_model.bin)"
    x = image((24, 40))
    with torch.inference_mode():
        out = reference(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
        model = served(loaded)
        same("ViT in-memory names logits", model.logits(model.final_tokens(x)), out.logits)
        same("ViT in-memory names [CLS] rows", rows(model, x), hf_rows(out.attentions))


def clip_config(**extra: Any) -> Any:
    return transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=24, **extra)


@pytest.mark.parametrize("size", SIZES)
def test_transformers_clip(tmp_path: Path, size: tuple[int, int]) -> None:
    """CLIPModel: [CLS] rows, image and text embeddings, and the zero-shot logits (logits_per_image)."""
    reference = hf_saved(transformers.CLIPModel(clip_config()), tmp_path)
    loaded = load_checkpoint(tmp_path, None, name="clip")
    variant = loaded.variant
    assert (variant.family, variant.pre_norm, variant.patch_bias, variant.act, variant.proj_dim) == ("clip", True, False, "quick_gelu", 24)
    assert variant.text is not None and (variant.text.eot_token_id, variant.text.causal, variant.text.tokenizer) == (63, True, "clip")
    model = served(loaded)
    x, ids = image(size), clip_ids(3, 10, 64)  # 10 of the 12 positions: the tower takes the first L
    with torch.inference_mode():
        out = reference(input_ids=ids, pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
        pooled = model.pool(model.final_tokens(x))
        image_emb, text_emb = model.embed_image(pooled), model.text(ids)
        same("CLIP [CLS] rows", rows(model, x), hf_rows(out.vision_model_output.attentions))
        same("CLIP pooled", pooled, reference.vision_model(pixel_values=x, interpolate_pos_encoding=True).pooler_output)
        # CLIPModel's outputs hold the projected features (get_image_features / get_text_features)
        same("CLIP image embedding", image_emb, out.vision_model_output.pooler_output)
        same("CLIP text embedding", text_emb, out.text_model_output.pooler_output)
        same("CLIP zero-shot", model.zero_shot(image_emb, text_emb), out.logits_per_image)


@pytest.mark.parametrize("projection", [True, False])
def test_transformers_clip_vision_models(tmp_path: Path, projection: bool) -> None:
    """CLIPVisionModelWithProjection (image_embeds) and CLIPVisionModel (its pooled [CLS]), no text tower."""
    config = transformers.CLIPVisionConfig(**VISION, projection_dim=24)
    made = transformers.CLIPVisionModelWithProjection(config) if projection else transformers.CLIPVisionModel(config)
    reference = hf_saved(made, tmp_path)
    loaded = load_checkpoint(tmp_path, None)
    assert loaded.variant.text is None and loaded.variant.proj_dim == (24 if projection else 0)
    model = served(loaded)
    x = image((24, 40))
    with torch.inference_mode():
        out = reference(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
        embedding = model.embed_image(model.pool(model.final_tokens(x)))
        same("CLIP vision [CLS] rows", rows(model, x), hf_rows(out.attentions))
        same("CLIP vision embedding", embedding, out.image_embeds if projection else out.pooler_output)


def siglip_probe_rows(vision: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' SigLIP probe over every layer's output tokens, normed as the head sees the last
    one (post_layernorm): ``head.attention`` with its per-head weights, (B, layers, heads, N)."""
    out = vision(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
    probe = vision.head.probe.expand(x.shape[0], -1, -1)
    found = []
    for hidden in out.hidden_states[1:]:
        normed = vision.post_layernorm(hidden)
        _, weights = vision.head.attention(probe, normed, normed, need_weights=True, average_attn_weights=False)  # (B, heads, 1, N)
        found.append(weights[:, :, 0])
    return torch.stack(found, dim=1)


def siglip_config(**text: Any) -> Any:
    return transformers.SiglipConfig(vision_config=VISION, text_config={**TEXT, "projection_size": 64, **text})


@pytest.mark.parametrize("size", SIZES)
def test_transformers_siglip(tmp_path: Path, size: tuple[int, int]) -> None:
    """SiglipModel: the probe's attention over each layer's tokens (the last: the pooling itself), the
    pooled image, the text embedding and the sigmoid's logits (scale and bias)."""
    reference = hf_saved(transformers.SiglipModel(siglip_config()), tmp_path)
    loaded = load_checkpoint(tmp_path, None, name="siglip")
    variant = loaded.variant
    assert (variant.family, variant.class_token, variant.pool, variant.act, variant.logit_bias) == (
        "siglip",
        False,
        "map",
        "gelu_tanh",
        True,
    )
    assert variant.text is not None and (variant.text.causal, variant.text.pool, variant.text.proj_bias, variant.text.tokenizer) == (
        False,
        "last",
        True,
        "json",
    )
    model = served(loaded)
    x, ids = image(size), torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        out = reference(input_ids=ids, pixel_values=x, interpolate_pos_encoding=True)
        pooled = model.pool(model.final_tokens(x))
        text_emb = model.text(ids)
        same("SigLIP probe rows", rows(model, x), siglip_probe_rows(reference.vision_model, x))
        same("SigLIP pooled", pooled, out.vision_model_output.pooler_output)
        same("SigLIP text embedding", text_emb, out.text_model_output.pooler_output)
        same("SigLIP zero-shot", model.zero_shot(model.embed_image(pooled), text_emb), out.logits_per_image)


def test_transformers_siglip_vision_model(tmp_path: Path) -> None:
    """SiglipVisionModel (saved without a vision_model. prefix by transformers 5)."""
    reference = hf_saved(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)), tmp_path)
    loaded = load_checkpoint(tmp_path, None)
    model = served(loaded)
    x = image((40, 24))
    with torch.inference_mode():
        tower = getattr(reference, "vision_model", reference)  # transformers 5's SiglipVisionModel is the tower itself
        same("SigLIP vision probe rows", rows(model, x), siglip_probe_rows(tower, x))
        same("SigLIP vision pooled", model(x), reference(pixel_values=x, interpolate_pos_encoding=True).pooler_output)


@pytest.mark.parametrize("registers", [False, True])
def test_a_dinov2_classifier_keeps_its_head(tmp_path: Path, registers: bool) -> None:
    """Dinov2[WithRegisters]ForImageClassification: classifier(cat([CLS], mean of the patches)) as our head."""
    shape = {**VISION, "mlp_ratio": 2, "id2label": LABELS}
    del shape["intermediate_size"]
    if registers:
        made = transformers.Dinov2WithRegistersForImageClassification(
            transformers.Dinov2WithRegistersConfig(**shape, num_register_tokens=4)
        )
    else:
        made = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**shape))
    reference = hf_saved(made, tmp_path)
    loaded = load_checkpoint(tmp_path, None)
    assert (loaded.variant.family, loaded.variant.head_input, loaded.labels) == ("dinov2", "token_mean", ("cat", "dog", "car"))
    model = served(loaded)
    for size in ((32, 32), (24, 40)):
        x = image(size)
        with torch.inference_mode():
            out = reference(pixel_values=x, output_attentions=True)
            same("DINOv2 classifier logits", model.logits(model.final_tokens(x)), out.logits)
            same("DINOv2 classifier [CLS] rows", rows(model, x), hf_rows(out.attentions))


# ----------------------------------------------------------------------------- timm
TINY_TIMM = {"img_size": 32, "patch_size": PATCH, "embed_dim": 64, "depth": 2, "num_heads": 4}
TIMM_TINY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {  # registered below as vitscope_test_<kind>
    "vit": (TimmViT, {"num_classes": 5}),
    "deit": (VisionTransformerDistilled, {"num_classes": 5}),
    # timm's CLIP towers: a pre-norm, no patch bias, LayerNorm eps 1e-5, QuickGELU; the head a "classifier"
    "clip": (TimmViT, {"pre_norm": True, "norm_layer": nn.LayerNorm, "act_layer": "quick_gelu", "num_classes": 8}),
    "siglip": (TimmViT, {"class_token": False, "global_pool": "map", "num_classes": 0, "act_layer": "gelu_tanh"}),
    "gap": (TimmViT, {"class_token": False, "global_pool": "avg", "num_classes": 0}),
}


def _register(kind: str) -> None:
    cls, args = TIMM_TINY[kind]
    name = f"vitscope_test_{kind}"

    def make(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if kind == "clip":  # its preprocessing, as a pretrained configuration states it
            kwargs["pretrained_cfg_overlay"] = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2)}
        return build_model_with_cfg(cls, name, pretrained, **{**TINY_TIMM, **args, **kwargs})

    make.__name__ = name
    register_model(make)


for _kind in TIMM_TINY:
    _register(_kind)


def timm_model(kind: str, **kwargs: Any) -> nn.Module:
    """Our registered tiny timm model, perturbed, resizing its positions at run time (dynamic_img_size)."""
    with _quiet():
        return perturbed(timm.create_model(f"vitscope_test_{kind}", pretrained=False, dynamic_img_size=True, **kwargs))


class _quiet:
    """timm warns that our test models have no pretrained configuration: expected, not a failure."""

    def __enter__(self) -> None:
        logging.getLogger("timm").setLevel(logging.ERROR)

    def __exit__(self, *_: object) -> None:
        logging.getLogger("timm").setLevel(logging.NOTSET)


def timm_probe(model: Any, x: torch.Tensor) -> torch.Tensor:
    """timm's attention pool's probe over the final normed tokens, recomputed from ``attn_pool``'s own
    projections as its explicit path does: (B, heads, N)."""
    pool = model.attn_pool
    with torch.inference_mode():
        tokens = model.forward_features(x)  # (B, N, C), normed
        B, N, _ = tokens.shape
        q = pool.q(pool.latent).reshape(1, 1, pool.num_heads, pool.head_dim).transpose(1, 2)  # (1, heads, 1, d)
        k = pool.kv(tokens).reshape(B, N, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4)[0]  # (B, heads, N, d)
        return ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]


def timm_file(tmp_path: Path, reference: nn.Module, suffix: str = ".safetensors") -> Path:
    path = tmp_path / f"fine_tuned{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    return path


@pytest.mark.parametrize("kind", ["vit", "deit", "clip", "siglip"])
def test_timm_models(tmp_path: Path, kind: str) -> None:
    """MODEL=timm:<name>: every block's row of the pooling query ([CLS]; DeiT's distillation token too;
    SigLIP's probe over the last block), the pooled image and the logits equal timm's forward
    (dynamic_img_size: its own position resize off the checkpoint's grid)."""
    with _quiet():
        base = base_from_spec(f"timm:vitscope_test_{kind}")
    assert isinstance(base, Variant) and base.name == f"vitscope_test_{kind}"
    reference: Any = timm_model(kind)
    loaded = load_checkpoint(timm_file(tmp_path, reference, ".pth" if kind == "deit" else ".safetensors"), base, name="tuned")
    variant = loaded.variant
    assert (
        loaded.source.startswith("timm (")
        and variant.name == "tuned"
        and (variant.interpolate_offset, variant.interpolate_antialias) == (0.0, True)
    )
    if kind == "clip":
        assert (variant.family, variant.pre_norm, variant.patch_bias, variant.act, variant.eps) == ("clip", True, False, "quick_gelu", 1e-5)
        assert (variant.mean, variant.std, variant.num_classes, variant.proj_dim) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 8, 0)
    model = served(loaded)
    for size in SIZES:
        x = image(size)
        with torch.inference_mode():
            normed = model.final_tokens(x)
            if kind == "siglip":
                same("timm SigLIP probe (last block)", rows(model, x)[:, -1], timm_probe(reference, x))
                same("timm SigLIP pooled", model.pool(normed), reference(x))
                continue
            theirs = timm_attention(reference, x)  # (B, blocks, heads, N, N)
            same(f"timm {kind} [CLS] rows", rows(model, x), theirs[..., 0, :])
            if kind == "deit":
                same("timm deit distillation rows", rows(model, x, "distillation"), theirs[..., 1, :])
            same(f"timm {kind} logits", model.logits(normed), reference(x))


def test_timm_reads_the_head_and_grid_of_its_tensors(tmp_path: Path) -> None:
    """A fine-tune at another resolution with another number of classes: both read from the tensors."""
    with _quiet():
        base = base_from_spec("timm:vitscope_test_vit")
        reference: Any = timm_model("vit", num_classes=7, img_size=48)
    assert base is not None and (base.num_classes, base.pretrain_grid) == (5, GRID)
    loaded = load_checkpoint(timm_file(tmp_path, reference), base)
    assert (loaded.variant.num_classes, loaded.variant.pretrain_grid) == (7, 6)
    x = image((40, 56))
    with torch.inference_mode():
        model = served(loaded)
        same("timm 48px fine-tune logits", model.logits(model.final_tokens(x)), reference(x))


REAL_TIMM = {  # timm's own names, built on the meta device only: (family, classes, distilled, pool, pre_norm, patch_bias)
    "vit_small_patch16_224": ("vit", 1000, False, "token", False, True),
    "deit_small_distilled_patch16_224": ("vit", 1000, True, "token", False, True),
    "vit_base_patch16_clip_224": ("clip", 1000, False, "token", True, False),
    "vit_base_patch16_siglip_224": ("siglip", 0, False, "map", False, True),
}


@pytest.mark.parametrize("name", list(REAL_TIMM))
def test_timm_names_people_deploy(name: str) -> None:
    """The architectures of timm's own models (no weights: their meta-device state dicts), and that our
    network for each takes timm's state dict as it is: keys and shapes, strictly."""
    variant = base_from_spec(f"timm:{name}")
    assert variant is not None
    assert (variant.family, variant.num_classes, variant.distill_token, variant.pool, variant.pre_norm, variant.patch_bias) == REAL_TIMM[
        name
    ]
    assert (variant.patch_size, variant.pretrain_grid) == (16, 14) and variant.text is None
    with torch.device("meta"):
        state = timm.create_model(name, pretrained=False).state_dict()
        ours = VisionTransformer(variant)
    converted, shaped, library = tower_state(state, variant)
    assert (shaped, library) == (variant, "timm")
    check_state_dict(ours, converted)


# ----------------------------------------------------------------------------- open_clip
OPENCLIP_TINY = {  # registered with open_clip.add_model_config as vitscope-test-<kind>
    "clip": {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": PATCH},
        "text_cfg": {"context_length": 12, "vocab_size": 64, "width": 48, "heads": 4, "layers": 2},
    },
    "siglip": {  # as ViT-B-16-SigLIP: a timm trunk with an attention pool, a bidirectional text tower
        "embed_dim": 64,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "vitscope_test_siglip", "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {
            "context_length": 12,
            "vocab_size": 64,
            "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": 48,
            "heads": 4,
            "layers": 2,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    },
}


@pytest.fixture(scope="module")
def open_clip_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for kind, config in OPENCLIP_TINY.items():
        (folder / f"vitscope-test-{kind}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def open_clip_rows(model: Any, x: torch.Tensor) -> torch.Tensor:
    """The [CLS] rows of every residual block of open_clip's image tower (B, blocks, heads, N): each
    block's nn.MultiheadAttention re-run on its normed input with need_weights (its forward passes
    need_weights=False)."""
    blocks = {id(block.ln_1): block for block in model.visual.transformer.resblocks}

    def rows(norm: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        attn = blocks[id(norm)].attn
        return attn(normed, normed, normed, need_weights=True, average_attn_weights=False)[1][:, :, 0]

    return captured(lambda: model.encode_image(x), (block.ln_1 for block in blocks.values()), rows)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_open_clip_models(tmp_path: Path, kind: str, open_clip_configs: None) -> None:
    """MODEL=open_clip:<config>: the pooling query's rows ([CLS] of every block; SigLIP's probe over the
    last), image and text embeddings and zero-shot logits equal open_clip's (at its own 4x4 grid:
    open_clip resizes positions only when loading weights, never at run time)."""
    with _quiet():
        base = base_from_spec(f"open_clip:vitscope-test-{kind}")
        reference: Any = perturbed(open_clip.create_model(f"vitscope-test-{kind}", pretrained=None))
    assert base is not None and base.text is not None and base.family == kind
    path = tmp_path / "open_clip.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_checkpoint(path, base)
    assert loaded.source == "open_clip (open_clip.pt)"
    model = served(loaded)
    x, ids = image((32, 32)), clip_ids(3, 12, 64)  # open_clip adds all 12 positions: full-length ids
    with torch.inference_mode():
        pooled = model.pool(model.final_tokens(x))
        image_emb, text_emb = model.embed_image(pooled), model.text(ids)
        if kind == "clip":
            assert (base.act, base.text.act, base.text.eot_token_id, base.text.tokenizer) == ("quick_gelu", "quick_gelu", 63, "clip")
            same("open_clip CLIP [CLS] rows", rows(model, x), open_clip_rows(reference, x))
        else:
            assert (base.pool, base.text.causal, base.text.pool, base.text.tokenizer, base.text.canonicalize) == (
                "map",
                False,
                "last",
                "json",
                True,
            )
            same("open_clip SigLIP probe (last block)", rows(model, x)[:, -1], timm_probe(reference.visual.trunk, x))
        same(f"open_clip {kind} image embedding", image_emb, reference.encode_image(x))
        same(f"open_clip {kind} text embedding", text_emb, reference.encode_text(ids))
        same(f"open_clip {kind} zero-shot", model.zero_shot(image_emb, text_emb), reference.get_logits(x, ids)[0])


def test_open_clip_configs_people_deploy() -> None:
    """open_clip's own configs (no weights): activations, pooling, tokenizer kinds; its BPE vocabulary."""
    b32, quick, siglip = (base_from_spec(f"open_clip:{n}") for n in ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16-SigLIP"))
    assert b32 is not None and b32.text is not None and quick is not None and quick.text is not None and siglip is not None
    assert (b32.patch_size, b32.embed_dim, b32.proj_dim, b32.act, b32.pre_norm, b32.family) == (32, 768, 512, "gelu", True, "clip")
    assert (b32.text.eot_token_id, b32.text.context_length, b32.text.causal, b32.text.tokenizer) == (49407, 77, True, "clip")
    assert (quick.act, quick.text.act) == ("quick_gelu", "quick_gelu")
    assert siglip.text is not None and (siglip.family, siglip.pool, siglip.class_token, siglip.logit_bias, siglip.embed_size) == (
        "siglip",
        "map",
        False,
        True,
        768,
    )
    assert (siglip.text.tokenizer, siglip.text.canonicalize, siglip.text.eps, siglip.text.proj_bias, siglip.text.pool) == (
        "json",
        True,
        1e-6,
        True,
        "last",
    )
    assert open_clip_bpe().name == OPENCLIP_BPE and open_clip_bpe().is_file()
    assert base_from_spec("dinov2_vits14") is None  # hub names: variants.get_variant


# ----------------------------------------------------------------------------- bad input
def edited_vit(folder: Path, **config: object) -> Path:
    """A saved tiny ViTForImageClassification whose config.json is then edited."""
    VIT_KINDS["ViTForImageClassification"]().save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, **config}))
    return folder


BAD_DIRECTORIES = {  # what is wrong -> (the config.json edit, phrases the error must contain)
    "an unsupported model_type": (
        {"model_type": "swin", "architectures": ["SwinModel"]},
        ["model_type='swin'", "'vit'", "'clip'", "'siglip'"],
    ),
    "an unsupported architecture": ({"architectures": ["ViTForMaskedImageModeling"]}, ["ViTForMaskedImageModeling", "ViTModel"]),
    "an unsupported activation": ({"hidden_act": "relu"}, ["hidden_act='relu'", "gelu_pytorch_tanh"]),
    "a grid the tensors contradict": ({"image_size": 48}, ["shape mismatches (1): ['pos_embed"]),
    "a depth the tensors contradict": ({"num_hidden_layers": 3}, ["missing keys (12): ['blocks.2.attn.proj.bias'"]),
    "classes the tensors contradict": ({"id2label": {"0": "a", "1": "b"}}, ["shape mismatches (2): ['head.bias"]),
}


@pytest.mark.parametrize("case", list(BAD_DIRECTORIES))
def test_bad_transformers_directories(tmp_path: Path, case: str) -> None:
    edit, phrases = BAD_DIRECTORIES[case]
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(edited_vit(tmp_path, **edit), None)
    assert all(phrase in str(error.value) for phrase in phrases), str(error.value)


def test_bad_towers(tmp_path: Path) -> None:
    """timm names that do not exist or pool by a mean, tensors against a timm or open_clip spec, and a
    SigLIP whose text projection misses the image embedding: CheckpointError, naming what is wrong."""
    with pytest.raises(CheckpointError, match=r"timm .* has no model 'vit_smal_patch16_224'; close names: \['vit_small_patch16_224'"):
        base_from_spec("timm:vit_smal_patch16_224")
    with pytest.raises(CheckpointError, match="global_pool='avg'"):
        base_from_spec("timm:vit_base_patch16_siglip_gap_224")
    with pytest.raises(CheckpointError, match="global_pool='avg'"), _quiet():
        base_from_spec("timm:vitscope_test_gap")
    with pytest.raises(CheckpointError, match="open_clip has no model config 'ViT-B-33'"):
        base_from_spec("open_clip:ViT-B-33")
    with _quiet():
        base = base_from_spec("timm:vitscope_test_vit")
        deeper = timm_model("vit", depth=3)
    assert base is not None
    with pytest.raises(CheckpointError, match=r"unexpected keys \(12\): \['blocks\.2\.attn\.proj\.bias'"):
        load_checkpoint(timm_file(tmp_path, deeper), base)
    transformers.SiglipModel(siglip_config(projection_size=48)).save_pretrained(tmp_path / "siglip")
    with pytest.raises(CheckpointError, match="text tower projects to 48 dims but the image embedding has 64"):
        load_checkpoint(tmp_path / "siglip", None)


def test_timm_dinov2_models() -> None:
    """timm's DINOv2 ViTs: with registers (no_embed_class: the class token's position folded into it)
    they are the dinov2 family, read by the DINO path (``keymaps.from_timm``); without, a LayerScale ViT."""
    from vitscope.model.sources import TIMM, to_hub_layout

    registers, plain = base_from_spec("timm:vit_small_patch14_reg4_dinov2"), base_from_spec("timm:vit_small_patch14_dinov2")
    assert registers is not None and plain is not None
    assert (registers.family, registers.num_registers, registers.patch_size, registers.pretrain_grid) == ("dinov2", 4, 14, 37)
    assert (plain.family, plain.num_registers, plain.layerscale_init is not None, plain.num_classes) == ("vit", 0, True, 0)
    for variant, name in ((registers, "vit_small_patch14_reg4_dinov2"), (plain, "vit_small_patch14_dinov2")):
        with torch.device("meta"):
            state = timm.create_model(name, pretrained=False).state_dict()
            if variant.family == "dinov2":
                to_hub_layout(state, variant, TIMM)  # checks strictly
            else:
                check_state_dict(VisionTransformer(variant), tower_state(state, variant)[0])
