"""The method registry: a method is one module and one entry in ``MODULES``. The method guide's
example (docs/guides/method.md) is run here as written, registered, and asked for through every
protocol (``tests/test_guides.py`` does the same in a copy of the package, in a fresh interpreter)."""

from __future__ import annotations

import base64
import io
import json
import types

import numpy as np
import orjson
import pytest
import torch

from scripts import REPO, docs
from testkit.checkpoints import TINY, backbone_state, encode, random_rgb
from testkit.handler import answer
from tests.support.guides import code_blocks
from tests.support.services import tiny_service
from vitscope.attention import patch_attention, to_tensor
from vitscope.errors import OptionError
from vitscope.image import prepare_image
from vitscope.methods import METHODS, Method
from vitscope.methods.explain import ExplainMethod
from vitscope.options import option_names, parse_options
from vitscope.schema import SCHEMA_FIELDS
from vitscope.service import AttentionService
from vitscope.vocab import ModelFacts

PNG = encode(random_rgb(40, 56, seed=9))


def guide_method() -> Method:
    """The module docs/guides/method.md shows, executed."""
    code, _registry_line = code_blocks(REPO / "docs" / "guides" / "method.md", "python")
    module = types.ModuleType("head_mean")
    exec(compile(code, "docs/guides/method.md", "exec"), module.__dict__)
    return module.METHOD


@pytest.fixture
def head_mean(monkeypatch: pytest.MonkeyPatch) -> Method:
    method = guide_method()
    monkeypatch.setitem(METHODS, method.name, method)
    return method


@pytest.fixture(scope="module")
def service() -> AttentionService:
    return tiny_service(TINY, backbone_state(seed=2), short_side=32)


def test_registered_method_is_parsed_and_validated(head_mean: Method, service: AttentionService) -> None:
    facts = ModelFacts.of(service.model)
    options = parse_options({"method": "head_mean", "reduce": "max", "layer": "4"}, facts)
    assert (options.method, options.params, options.layer) == ("head_mean", (("reduce", "max"),), 4)
    assert parse_options({"method": "head_mean"}, facts).params == (("reduce", "mean"),)
    assert "reduce" in option_names()
    for raw, message in [
        ({"reduce": "max"}, "reduce applies to method=head_mean only (method=attention)"),
        ({"method": "head_mean", "heads": "0"}, "head_mean combines every head"),
        ({"method": "head_mean", "reduce": "median"}, "reduce='median' is not one of ['mean', 'max']"),
        ({"method": "rollout", "reduce": "max"}, "reduce applies to method=head_mean only (method=rollout)"),
    ]:
        (reply,) = answer(service, [{"data": PNG, **raw}])
        assert reply.status == 400 and orjson.loads(reply.body) == {"error": message}


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_registered_method_answers_in_every_protocol(head_mean: Method, service: AttentionService, reduce: str) -> None:
    fields = {"method": "head_mean", "reduce": reduce, "layer": "4", "upsample": "false", "mask": "0.5"}
    (reply,) = answer(service, [{"data": PNG, **fields}])
    doc = orjson.loads(reply.body)
    assert reply.status == 200 and (doc["method"], doc["reduce"], doc["layer"]) == ("head_mean", reduce, 4)
    assert list(doc)[-2:] == ["attention", "masks"] and "head_fusion" not in doc
    # the map is the head mean (max) of layer 4's [CLS] attention, computed independently
    image = prepare_image(PNG, patch_size=16, max_pixels=10**8, max_tokens=10**6, short_side=32)
    heads = patch_attention(service.model, to_tensor(image.image, TINY.mean, TINY.std)[None], 4)[0]  # (heads, h, w)
    expected = heads.mean(dim=0) if reduce == "mean" else heads.amax(dim=0)
    np.testing.assert_allclose(np.asarray(doc["attention"], np.float32), expected[None].numpy(), rtol=1e-5, atol=1e-7)
    rows = [
        {"data": PNG, **fields, "format": "npz"},
        {"body": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [encode_b64(PNG)]}], "parameters": fields}},
        {"body": {"instances": [{"data": encode_b64(PNG), **fields}]}},
    ]
    npz, v2, v1 = answer(service, rows)
    with np.load(io.BytesIO(npz.body)) as arrays:
        assert set(arrays.files) == {"attention", "meta", "masks"} and json.loads(str(arrays["meta"]))["reduce"] == reduce
        np.testing.assert_allclose(arrays["attention"], np.asarray(doc["attention"], np.float32), rtol=1e-6)
    outputs = orjson.loads(v2.body)["outputs"]
    assert [o["name"] for o in outputs] == ["attention", "masks"] and outputs[0]["parameters"]["method"] == "head_mean"
    assert orjson.loads(v1.body)["predictions"][0]["reduce"] == reduce


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_registered_method_is_described_and_documented(head_mean: Method, service: AttentionService) -> None:
    described = {m["name"]: m for m in service.description()["methods"]}["head_mean"]
    assert described["own_options"] == ["reduce"] and described["excludes"] == dict(head_mean.excludes)
    reduce = {o["name"]: o for o in described["options"]}["reduce"]
    assert reduce["choices"] == ["mean", "max"] and reduce["default"] == "mean"
    assert "heads" not in {o["name"] for o in described["options"]}
    table = docs.methods_table()
    assert "| `head_mean` |" in table and "`reduce`" in table
    assert "| `reduce` | `mean` |" in docs.options_table()


def test_registry_entries_declare_everything(service: AttentionService) -> None:
    """Every shipped method names its options, outputs and needs, and computes what it declares."""
    facts = ModelFacts.of(service.model)
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    required = {"point": "20,10"}  # a value for each option a method requires
    for name, method in METHODS.items():
        assert method.name == name and method.summary and method.outputs and method.needs.blocks
        assert set(method.requires) <= set(required), f"give the test a sample value for {set(method.requires) - set(required)}"
        raw = {"method": name, "upsample": "false", **{k: required[k] for k in method.requires}}
        if any(output.asked_by == "mask" for output in method.outputs):  # a method with masks: ask for them, and their boxes
            raw.update(mask="0.5", boxes="true")
        if isinstance(method, ExplainMethod):  # a backbone: its embedding's cosine to another image's
            raw["target"] = "embedding"
        options = parse_options(raw, facts)
        if isinstance(method, ExplainMethod):
            reference = torch.randn(service.model.variant.embed_dim, generator=torch.Generator().manual_seed(1))
            goals = method.goals(service.model, [options], service.predictor.text_embeddings, [reference], torch.device("cpu"))
            tensors = method.explain(service.model, x, method.forward_spec(options), goals)
        else:
            method.check(options, (32, 48))
            with torch.inference_mode():
                tensors = method.compute(service.model, x, method.forward_spec(options))
        computed = {k: v[0].numpy() for k, v in tensors.items()}
        arrays = method.arrays(options, computed, TINY.patch_size)
        assert list(arrays) == [o.name for o in method.outputs if o.name in arrays]  # declared order
        assert method.outputs[0].name in arrays and arrays[method.outputs[0].name].shape[-2:] == (2, 3)  # the main map, per patch
        assert set(method.metadata(options, TINY.patch_size)) == set(method.metadata_fields)


def test_a_method_may_require_options(head_mean: Method, monkeypatch: pytest.MonkeyPatch, service: AttentionService) -> None:
    """``requires``: a request with the method but without the option is a 400 saying how to give it."""
    strict = type(head_mean)()
    monkeypatch.setattr(type(head_mean), "requires", {"reduce": "method=head_mean needs reduce=mean or reduce=max"})
    facts = ModelFacts.of(service.model)
    with pytest.raises(OptionError, match="method=head_mean needs reduce=mean or reduce=max"):
        parse_options({"method": "head_mean"}, facts)
    assert parse_options({"method": "head_mean", "reduce": "max"}, facts).params == (("reduce", "max"),)
    assert strict.describe()["requires"] == {"reduce": "method=head_mean needs reduce=mean or reduce=max"}


def test_no_response_field_is_named_twice() -> None:
    """A method's metadata fields, its outputs and the shared schema fields never share a name (one JSON document holds them all)."""
    for method in METHODS.values():
        names = [*SCHEMA_FIELDS, *method.metadata_fields, *(o.name for o in method.outputs)]
        assert len(names) == len(set(names)), (method.name, sorted(n for n in names if names.count(n) > 1))
