"""The guides in docs/guides/, done as they say: their code is saved where they say, in a copy of the
package, and the result is imported and used in a fresh interpreter. The copy must differ from the
package by exactly what the guide names."""

from __future__ import annotations

import re
from pathlib import Path

from scripts import REPO
from tests.support.guides import changes, code_blocks, package_copy, run_fresh

GUIDES = REPO / "docs" / "guides"


METHOD_USE = """
    import io, json
    import numpy as np
    import vitscope
    assert vitscope.__file__.startswith({copy!r}), vitscope.__file__
    import vitscope.service  # the registry loads the new module: no import cycle
    from vitscope.methods import METHODS
    from vitscope.model.checkpoint import build_model
    from vitscope.precision import PrecisionPlan
    from vitscope.service import AttentionService, ServiceConfig
    from testkit.checkpoints import TINY, backbone_state, encode, random_rgb
    from testkit.handler import answer

    assert list(METHODS)[-1] == "head_mean"
    model = build_model(TINY, backbone_state(seed=2))
    config = ServiceConfig(model=TINY.name, weights="test", short_side=32)
    service = AttentionService(model, TINY, config, precisions=PrecisionPlan.fp32_only())
    png = encode(random_rgb(40, 56, seed=9))
    fields = {{"data": png, "method": "head_mean", "reduce": "max", "layer": "4", "upsample": "false"}}
    reply, npz, wrong = answer(service, [fields, {{**fields, "format": "npz"}}, {{**fields, "heads": "0"}}])
    document = json.loads(reply.body)
    assert reply.status == 200 and (document["method"], document["reduce"], document["layer"]) == ("head_mean", "max", 4)
    assert np.asarray(document["attention"]).shape == (1, *document["grid"])  # one fused map on the patch grid
    assert npz.status == 200 and np.load(io.BytesIO(npz.body))["attention"].shape == (1, *document["grid"])
    assert wrong.status == 400 and json.loads(wrong.body) == {{"error": "head_mean combines every head"}}
    described = {{m["name"]: m for m in service.description()["methods"]}}["head_mean"]
    assert described["own_options"] == ["reduce"]
    print("ok", list(METHODS))
"""


def test_the_method_guide_is_its_module_and_one_registry_line(tmp_path: Path) -> None:
    """docs/guides/method.md: the module saved as methods/head_mean.py, its line added to MODULES;
    nothing else changes, and the method answers in a fresh interpreter."""
    guide = GUIDES / "method.md"
    module, registry_line = code_blocks(guide, "python")
    copy = package_copy(tmp_path)
    (copy / "methods" / "head_mean.py").write_text(module)
    init = copy / "methods" / "__init__.py"
    text = init.read_text()
    last = re.search(r"MODULES: tuple\[str, \.\.\.\] = \((.*?)\n\)", text, re.DOTALL)
    assert last, "methods/__init__.py has no MODULES tuple"
    init.write_text(text[: last.end() - 2] + "\n" + registry_line.rstrip("\n") + text[last.end() - 2 :])
    changed = changes(copy)
    assert changed.added_files == ["methods/head_mean.py"] and not changed.missing_files
    assert changed.added_lines == {"methods/__init__.py": [registry_line.rstrip("\n")]}
    assert changed.removed_lines == {"methods/__init__.py": []}
    for named in ("vitscope/methods/head_mean.py", "vitscope/methods/__init__.py", "tests/test_head_mean.py"):
        assert f"`{named}`" in guide.read_text(), f"the guide does not name {named}"
    assert "ok" in run_fresh(tmp_path, METHOD_USE.format(copy=str(copy)))


PROTOCOL_USE = """
    import base64, json
    import vitscope
    assert vitscope.__file__.startswith({copy!r}), vitscope.__file__
    from vitscope.model.checkpoint import build_model
    from vitscope.precision import PrecisionPlan
    from vitscope.protocols import KSERVE_V2, PLAIN, route
    from vitscope.protocols.hf_endpoint import HF_ENDPOINT
    from vitscope.service import AttentionService, ServiceConfig
    from testkit.checkpoints import TINY, backbone_state, encode, random_rgb
    from testkit.handler import answer

    model = build_model(TINY, backbone_state(seed=2))
    config = ServiceConfig(model=TINY.name, weights="test", short_side=32)
    service = AttentionService(model, TINY, config, precisions=PrecisionPlan.fp32_only())
    b64 = base64.b64encode(encode(random_rgb(40, 56, seed=9))).decode()
    body = json.dumps({{"inputs": b64, "parameters": {{"layer": 5, "upsample": False}}}}).encode()
    assert route({{"body": body}})[0] is HF_ENDPOINT
    assert route({{"body": json.dumps({{"inputs": [{{"datatype": "BYTES", "data": [b64]}}]}}).encode()}})[0] is KSERVE_V2
    assert route({{"body": json.dumps({{"image": b64}}).encode()}})[0] is PLAIN
    bad = json.dumps({{"inputs": "not base64!", "parameters": {{}}}}).encode()
    options = json.dumps({{"inputs": b64, "parameters": [5]}}).encode()
    unknown = json.dumps({{"inputs": b64, "parameters": {{"colour": "red"}}}}).encode()
    ok, wrong, listed, option = answer(service, [{{"body": body}}, {{"body": bad}}, {{"body": options}}, {{"body": unknown}}])
    document = json.loads(ok.body)
    assert ok.status == 200 and (document["layer"], document["upsampled"]) == (5, False) and len(document["attention"]) == TINY.num_heads
    assert wrong.status == 400 and "not valid base64" in json.loads(wrong.body)["error"]
    assert listed.status == 400 and json.loads(listed.body) == {{"error": '"parameters" must be an object of options, e.g. {{"layer": 5}}'}}
    assert option.status == 400 and json.loads(option.body)["error"].startswith("unknown option(s) ['colour']")
    print("ok")
"""


def test_the_protocol_guide_is_its_module_and_two_lines(tmp_path: Path) -> None:
    """docs/guides/protocol.md: the codec saved as protocols/hf_endpoint.py, its import and its place
    in CODECS; nothing else changes, and it answers through the handler in a fresh interpreter."""
    guide = GUIDES / "protocol.md"
    module, import_line, codecs_line = code_blocks(guide, "python")
    copy = package_copy(tmp_path)
    (copy / "protocols" / "hf_endpoint.py").write_text(module)
    init = copy / "protocols" / "__init__.py"
    text = init.read_text()
    (last_import,) = [line for line in text.splitlines() if line.startswith("from .plain import")]
    codecs = re.search(r"CODECS: list\[Codec\] = \[(.*?)\n\]", text, re.DOTALL)
    assert codecs, "protocols/__init__.py has no CODECS list"
    text = text[: codecs.end() - 2] + "\n" + codecs_line.rstrip("\n") + text[codecs.end() - 2 :]
    init.write_text(text.replace(last_import, last_import + "\n" + import_line.rstrip("\n")))
    changed = changes(copy)
    assert changed.added_files == ["protocols/hf_endpoint.py"] and not changed.missing_files
    assert changed.added_lines == {"protocols/__init__.py": [import_line.rstrip("\n"), codecs_line.rstrip("\n")]}
    assert changed.removed_lines == {"protocols/__init__.py": []}
    for named in ("vitscope/protocols/hf_endpoint.py", "vitscope/protocols/__init__.py", "tests/test_hf_endpoint.py"):
        assert f"`{named}`" in guide.read_text(), f"the guide does not name {named}"
    assert "ok" in run_fresh(tmp_path, PROTOCOL_USE.format(copy=str(copy)))
