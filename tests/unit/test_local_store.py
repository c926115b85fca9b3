"""The local store: blobs, create/show/tags/copy/delete, and the promise to stay inside root."""

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from corral.api.errors import BadRequestError, CorralError, InvalidNameError, NotFoundError
from corral.store.local import LocalStore
from corral.store.model_store import ModelRecord
from tests.support.gguf import gguf_bytes
from tests.support.model import TEST_MODEL as REAL_MODEL


def gguf(kv: dict, tensors=(("token_embd.weight", 2, (64, 1000)),)) -> bytes:
    return gguf_bytes(kv, tensors)


TINY = gguf(
    {
        "general.architecture": "llama",
        "general.name": "Tiny",
        "general.file_type": 2,
        "llama.context_length": 2048,
        "llama.embedding_length": 64,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(1500)],
        "tokenizer.ggml.merges": ["a b", "c d"],
        "tokenizer.chat_template": "{{ messages }}",
    }
)
BERT = gguf({"general.architecture": "bert", "general.file_type": 1, "bert.pooling_type": 1})


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(coro):
    return asyncio.run(coro)


async def body(*parts: bytes):
    for part in parts:
        yield part


async def never_read():
    raise AssertionError("the body must not be read")
    yield b""  # pragma: no cover


async def collect(gen) -> list[str]:
    return [item["status"] async for item in gen]


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "models")


def upload(store: LocalStore, data: bytes) -> str:
    digest = digest_of(data)
    run(store.write_blob(digest, body(data)))
    return digest


def create(store: LocalStore, request: dict) -> list[str]:
    return run(collect(store.create(request)))


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --- blobs ---------------------------------------------------------------------------------


def test_write_blob_creates_then_reports_existing(store):
    digest = digest_of(b"hello world")
    assert run(store.write_blob(digest, body(b"hello ", b"world"))) is True
    assert store.blob_path(digest).read_bytes() == b"hello world"
    assert run(store.write_blob(digest, never_read())) is False
    assert run(store.has_blob(digest)) is True
    assert run(store.has_blob(digest.replace(":", "-"))) is True
    assert run(store.has_blob("sha256:" + "0" * 64)) is False


def test_write_blob_mismatch_leaves_nothing_behind(store):
    digest = "sha256:" + "0" * 64
    with pytest.raises(BadRequestError) as info:
        run(store.write_blob(digest, body(b"abc")))
    actual = hashlib.sha256(b"abc").hexdigest()
    assert info.value.message == f'digest mismatch, expected "{digest}", got "sha256:{actual}"'
    assert files_under(store.root) == set()


def test_write_blob_interrupted_upload_leaves_nothing_behind(store):
    async def failing():
        yield b"x" * 10
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        run(store.write_blob(digest_of(b"whatever"), failing()))
    assert files_under(store.root) == set()


def test_concurrent_writers_of_one_blob(store):
    data = os.urandom(3 << 20)
    digest = digest_of(data)

    async def both():
        chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
        return await asyncio.gather(*(store.write_blob(digest, body(*chunks)) for _ in range(3)))

    assert True in run(both())
    assert store.blob_path(digest).read_bytes() == data
    assert files_under(store.root) == {f"blobs/sha256-{digest[7:]}"}


def test_large_upload_spans_several_slices(store):
    data = os.urandom(9 << 20)
    digest = digest_of(data)
    chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    assert run(store.write_blob(digest, body(*chunks))) is True
    assert hashlib.sha256(store.blob_path(digest).read_bytes()).hexdigest() == digest[7:]


@pytest.mark.parametrize(
    "digest",
    ["", "sha256:abc", "sha512:" + "a" * 64, "sha256:" + "g" * 64, "sha256:../../etc/passwd", "sha256/" + "a" * 64],
)
def test_invalid_digests(store, digest):
    for call in (lambda: store.blob_path(digest), lambda: run(store.has_blob(digest))):
        with pytest.raises(BadRequestError) as info:
            call()
        assert info.value.message == "invalid digest format"
    with pytest.raises(BadRequestError):
        run(store.write_blob(digest, never_read()))


# --- create --------------------------------------------------------------------------------


def test_create_from_a_gguf_blob(store):
    digest = upload(store, TINY)
    statuses = create(
        store,
        {
            "model": "tiny",
            "files": {"tiny.gguf": digest},
            "template": "{{ .Prompt }}",
            "system": "Be brief.",
            "parameters": {"stop": ["<|im_end|>"], "temperature": 0.2},
            "messages": [{"role": "user", "content": "hi"}],
            "license": "MIT",
        },
    )
    assert statuses[0] == "parsing GGUF"
    assert statuses[1] == f"using existing layer {digest}"
    assert [s.split(" sha256:")[0] for s in statuses[2:-2]] == ["creating new layer"] * 5
    assert statuses[-2:] == ["writing manifest", "success"]

    path = store.root / "manifests/registry.ollama.ai/library/tiny/latest"
    raw = path.read_bytes()
    manifest = json.loads(raw)
    assert raw == json.dumps(manifest, separators=(",", ":")).encode()  # compact, as Ollama writes
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]] == [
        "model",
        "template",
        "system",
        "license",
        "params",
        "messages",
    ]
    assert manifest["layers"][0] == {
        "mediaType": "application/vnd.ollama.image.model",
        "digest": digest,
        "size": len(TINY),
    }

    config = json.loads(store.blob_path(manifest["config"]["digest"]).read_bytes())
    assert config["model_format"] == "gguf"
    assert config["model_family"] == "llama"
    assert config["model_families"] == ["llama"]
    assert config["model_type"] == "64K"
    assert config["file_type"] == "Q4_0"
    assert config["context_length"] == 2048
    assert config["embedding_length"] == 64

    record = run(store.get("tiny"))
    assert record.template == "{{ .Prompt }}"
    assert record.system == "Be brief."
    assert record.params == {"stop": ["<|im_end|>"], "temperature": 0.2}
    assert record.messages == [{"role": "user", "content": "hi"}]
    assert record.license == ["MIT"]
    assert record.model_path == store.blob_path(digest)
    assert record.digest == hashlib.sha256(raw).hexdigest()
    assert record.size == sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]


def test_create_twice_reuses_layers(store):
    digest = upload(store, TINY)
    request = {"model": "tiny", "files": {"tiny.gguf": digest}, "system": "same"}
    create(store, request)
    statuses = create(store, request)
    assert all(s.startswith("using existing layer") for s in statuses[1:-2])


def test_create_from_an_existing_model_overrides_only_what_is_set(store):
    digest = upload(store, TINY)
    create(
        store,
        {
            "model": "base",
            "files": {"tiny.gguf": digest},
            "template": "base template",
            "system": "base system",
            "parameters": {"temperature": 0.5, "stop": ["a"]},
            "license": "L1",
        },
    )
    statuses = create(
        store,
        {
            "model": "derived",
            "from": "BASE",
            "system": "new",
            "parameters": {"stop": ["b"], "top_k": 3},
            "license": ["L2"],
        },
    )
    assert statuses[0] == f"using existing layer {digest}"
    derived = run(store.get("derived"))
    assert derived.template == "base template"
    assert derived.system == "new"
    assert derived.params == {"stop": ["b"], "temperature": 0.5, "top_k": 3}
    assert derived.license == ["L1", "L2"]
    assert derived.model_path == store.blob_path(digest)
    assert derived.config["model_family"] == "llama"
    assert run(store.show("derived"))["details"]["parent_model"] == "base:latest"


def test_legacy_modelfile_requests(store):
    digest = upload(store, TINY)
    statuses = create(store, {"name": "legacy", "modelfile": f"FROM @{digest}\nPARAMETER num_ctx 1024\nSYSTEM hi"})
    assert statuses[0] == "parsing GGUF" and statuses[-1] == "success"
    create(store, {"model": "legacy2", "modelfile": "FROM legacy\nPARAMETER top_p 0.5"})
    record = run(store.get("legacy2"))
    assert record.params == {"num_ctx": 1024, "top_p": 0.5}
    assert record.system == "hi"


def test_create_with_a_projector(store):
    model = upload(store, TINY)
    projector_bytes = gguf({"general.architecture": "clip", "general.type": "mmproj"})
    projector = upload(store, projector_bytes)
    create(store, {"model": "vision", "files": {"model.gguf": model, "mmproj.gguf": projector}})
    record = run(store.get("vision"))
    assert record.model_path == store.blob_path(model)
    assert record.projectors == [store.blob_path(projector)]


def test_create_with_an_adapter(store):
    model = upload(store, TINY)
    adapter = upload(store, gguf({"general.architecture": "llama", "general.type": "adapter"}))
    create(store, {"model": "tuned", "files": {"model.gguf": model}, "adapters": {"lora.gguf": adapter}})
    assert run(store.get("tuned")).adapters == [store.blob_path(adapter)]


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        ({"model": "m"}, BadRequestError, "neither 'from' or 'files' was specified"),
        ({"model": "m", "from": ""}, BadRequestError, "neither 'from' or 'files' was specified"),
        ({"from": "x"}, InvalidNameError, "invalid model name"),
        ({"model": "bad name", "from": "x"}, InvalidNameError, "invalid model name"),
        ({"model": "m", "from": "../x"}, InvalidNameError, "invalid model name"),
        ({"model": "m", "files": {"/etc/passwd": "sha256:" + "a" * 64}}, BadRequestError, "file path must be relative"),
        ({"model": "m", "files": {"../up.gguf": "sha256:" + "a" * 64}}, BadRequestError, "file path must be relative"),
        ({"model": "m", "files": {"a/./b.gguf": "sha256:" + "a" * 64}}, BadRequestError, "file path must be relative"),
        ({"model": "m", "files": {"c:\\x.gguf": "sha256:" + "a" * 64}}, BadRequestError, "file path must be relative"),
        ({"model": "m", "files": {"m.gguf": ""}}, BadRequestError, "invalid digest format"),
        ({"model": "m", "files": {"m.gguf": "sha256:xyz"}}, BadRequestError, "invalid digest format"),
        ({"model": "m", "from": "nowhere"}, NotFoundError, "model 'nowhere' not found"),
        ({"model": "m", "modelfile": "FROM nowhere:1b"}, NotFoundError, "model 'nowhere:1b' not found"),
        ({"model": "m", "modelfile": "PARAMETER top_k 1"}, BadRequestError, "no FROM line"),
        ({"model": "m", "modelfile": ""}, BadRequestError, "path or Modelfile are required"),
        ({"model": "m", "license": 5, "from": "x"}, BadRequestError, "license must be a string or a list of strings"),
        (
            {"model": "m", "from": "x", "parameters": {"num_ctx": "big"}},
            BadRequestError,
            'option "num_ctx" must be of type integer',
        ),
        ({"model": "m", "from": "x", "quantize": "q4_K_M"}, BadRequestError, None),
        ({"model": "m", "path": "/etc/Modelfile"}, BadRequestError, None),
    ],
)
def test_create_validation_fails_before_the_first_progress_line(store, request_, error, message):
    gen = store.create(request_)
    with pytest.raises(error) as info:
        run(gen.__anext__())
    if message is not None:
        assert info.value.message == message
    assert not (store.root / "manifests").exists()


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"m.gguf": "sha256:" + "b" * 64}, "blob not found for m.gguf"),
        ({"model.safetensors": "sha256:" + "b" * 64}, "safetensors"),
        ({"notes.json": "UPLOAD:not a model"}, "not in GGUF format"),
        ({"a.gguf": "UPLOAD:tiny", "b.gguf": "UPLOAD:tiny2"}, "only one model GGUF"),
        ({"lora.gguf": "UPLOAD:adapter"}, "LoRA adapter"),
    ],
)
def test_create_file_problems_are_400s(store, files, fragment):
    uploads = {
        "UPLOAD:not a model": b'{"hello": "world"}' + b" " * 64,
        "UPLOAD:tiny": TINY,
        "UPLOAD:tiny2": gguf({"general.architecture": "qwen2"}),
        "UPLOAD:adapter": gguf({"general.architecture": "llama", "general.type": "adapter"}),
    }
    files = {path: upload(store, uploads[d]) if d in uploads else d for path, d in files.items()}
    with pytest.raises(BadRequestError) as info:
        run(store.create({"model": "m", "files": files}).__anext__())
    assert fragment in info.value.message
    assert not (store.root / "manifests").exists()


def test_template_errors_are_400s(store):
    with pytest.raises(BadRequestError) as info:
        run(store.create({"model": "m", "from": "x", "template": "{{ .Prompt "}).__anext__())
    assert info.value.message.startswith("template error: ")


def test_create_writes_to_the_stored_case_of_an_existing_model(store):
    digest = upload(store, TINY)
    create(store, {"model": "MyModel", "files": {"m.gguf": digest}})
    create(store, {"model": "mymodel", "files": {"m.gguf": digest}, "system": "v2"})
    assert [t["name"] for t in run(store.tags())] == ["MyModel:latest"]
    assert run(store.get("MYMODEL")).system == "v2"


def test_create_over_a_model_prunes_layers_nothing_uses(store):
    digest = upload(store, TINY)
    create(store, {"model": "m", "files": {"m.gguf": digest}, "system": "old system"})
    old_system = next(
        layer for layer in run(store.get("m")).manifest["layers"] if layer["mediaType"].endswith("system")
    )
    create(store, {"model": "m", "files": {"m.gguf": digest}, "system": "new system"})
    assert not store.blob_path(old_system["digest"]).exists()
    assert store.blob_path(digest).exists()


def test_noprune_keeps_old_layers(tmp_path):
    store = LocalStore(tmp_path / "models", noprune=True)
    digest = upload(store, TINY)
    create(store, {"model": "m", "files": {"m.gguf": digest}, "system": "old system"})
    old_system = next(
        layer for layer in run(store.get("m")).manifest["layers"] if layer["mediaType"].endswith("system")
    )
    create(store, {"model": "m", "files": {"m.gguf": digest}, "system": "new system"})
    assert store.blob_path(old_system["digest"]).exists()


def test_uploads_waiting_for_their_create_survive_pruning(store):
    digest = upload(store, TINY)
    create(store, {"model": "m", "files": {"m.gguf": digest}, "system": "one"})
    pending = upload(store, b"an upload whose create has not come yet")
    create(store, {"model": "m", "files": {"m.gguf": digest}, "system": "two"})
    run(store.delete("m"))
    assert store.blob_path(pending).exists()


# --- get / tags / show ---------------------------------------------------------------------


def test_get_is_case_insensitive_and_keeps_stored_case(store):
    create(store, {"model": "User/Model:Tag", "files": {"m.gguf": upload(store, TINY)}})
    record = run(store.get("user/model:tag"))
    assert isinstance(record, ModelRecord)
    assert record.name.display == "User/Model:Tag"


def test_get_errors(store):
    with pytest.raises(NotFoundError) as info:
        run(store.get("missing"))
    assert info.value.message == "model 'missing' not found"
    for bad in ("bad name", "../../etc/passwd", ""):
        with pytest.raises(InvalidNameError):
            run(store.get(bad))


def test_tags_entries_newest_first(store):
    digest = upload(store, TINY)
    create(store, {"model": "older", "files": {"m.gguf": digest}})
    create(store, {"model": "user/newer:v1", "files": {"m.gguf": digest}})
    older = store.root / "manifests/registry.ollama.ai/library/older/latest"
    os.utime(older, (1_700_000_000, 1_700_000_000))
    tags = run(store.tags())
    assert [t["name"] for t in tags] == ["user/newer:v1", "older:latest"]
    entry = tags[1]
    assert set(entry) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert entry["model"] == "older:latest"
    assert entry["digest"] == hashlib.sha256(older.read_bytes()).hexdigest()
    assert entry["modified_at"].startswith(("2023-11-14T", "2023-11-15T"))
    assert entry["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "64K",
        "quantization_level": "Q4_0",
    }


def test_tags_skips_damaged_models(store):
    create(store, {"model": "good", "files": {"m.gguf": upload(store, TINY)}})
    bad = store.root / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    missing_config = store.root / "manifests/registry.ollama.ai/library/noconfig/latest"
    missing_config.parent.mkdir(parents=True)
    missing_config.write_text(json.dumps({"config": {"digest": "sha256:" + "c" * 64}, "layers": []}))
    (store.root / "manifests/registry.ollama.ai/library/good/.latest.tmp").write_text("half written")
    assert [t["name"] for t in run(store.tags())] == ["good:latest"]


def test_tags_on_an_empty_store(store):
    assert run(store.tags()) == []


def test_show(store):
    digest = upload(store, TINY)
    create(
        store,
        {
            "model": "tiny",
            "files": {"m.gguf": digest},
            "template": "{{ .System }} {{ .Prompt }}",
            "parameters": {"stop": ["<|im_end|>", "<|eot|>"], "num_ctx": 4096},
            "license": ["MIT", "Extra"],
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    show = run(store.show("TINY"))
    assert list(show) == [
        "license",
        "modelfile",
        "parameters",
        "template",
        "details",
        "messages",
        "model_info",
        "tensors",
        "capabilities",
        "modified_at",
    ]
    assert show["license"] == "MIT\nExtra"
    assert show["template"] == "{{ .System }} {{ .Prompt }}"
    assert show["parameters"] == (
        'num_ctx                        4096\nstop                           "<|im_end|>"\nstop                           "<|eot|>"'
    )
    assert show["modelfile"].startswith('# Modelfile generated by "ollama show"\n')
    assert f"\nFROM {store.blob_path(digest)}\n" in show["modelfile"]
    assert "\nPARAMETER stop <|eot|>\n" in show["modelfile"]
    assert show["messages"] == [{"role": "user", "content": "hi"}]
    assert show["capabilities"] == ["completion"]
    assert show["details"]["quantization_level"] == "Q4_0"
    info = show["model_info"]
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert list(info) == sorted(info)
    assert info["general.architecture"] == "llama"
    assert info["general.parameter_count"] == 64000
    assert info["tokenizer.ggml.tokens"] is None  # too long without verbose
    assert info["tokenizer.ggml.merges"] == ["a b", "c d"]
    assert show["tensors"] == [{"name": "token_embd.weight", "type": "Q4_0", "shape": [64, 1000]}]

    verbose = run(store.show("tiny", verbose=True))
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 1500


def test_show_defaults_and_overrides(store):
    create(store, {"model": "plain", "files": {"m.gguf": upload(store, TINY)}})
    show = run(store.show("plain", system="Override", options={"temperature": 0.1}))
    # No TEMPLATE layer: the GGUF's chat template is what renders prompts, so show it,
    # and leave TEMPLATE out of the Modelfile so re-creating from it keeps that behaviour.
    assert show["template"] == "{{ messages }}"
    assert "TEMPLATE" not in show["modelfile"]
    assert show["system"] == "Override"
    assert show["parameters"] == ""
    assert "PARAMETER temperature 0.1" in show["modelfile"]
    assert "messages" not in show


def test_show_capabilities(tmp_path):
    seen = []

    def capabilities(record, info):
        seen.append((record.name.display, info.architecture))
        return ["completion", "tools"]

    store = LocalStore(tmp_path / "models", capabilities=capabilities)
    create(store, {"model": "m", "files": {"m.gguf": upload(store, TINY)}})
    assert run(store.show("m"))["capabilities"] == ["completion", "tools"]
    assert seen == [("m:latest", "llama")]


def test_show_embedding_model_by_default(store):
    create(store, {"model": "embed", "files": {"m.gguf": upload(store, BERT)}})
    show = run(store.show("embed"))
    assert show["capabilities"] == ["embedding"]
    assert show["template"] == "{{ .Prompt }}"  # Ollama's default when there is nothing else
    assert show["details"]["family"] == "bert"


def test_show_not_found(store):
    with pytest.raises(NotFoundError) as info:
        run(store.show("nope:7b"))
    assert info.value.message == "model 'nope:7b' not found"


# --- copy / delete -------------------------------------------------------------------------


def test_copy_duplicates_the_manifest_only(store):
    create(store, {"model": "src", "files": {"m.gguf": upload(store, TINY)}})
    run(store.copy("SRC", "team/dst:v2"))
    src = store.root / "manifests/registry.ollama.ai/library/src/latest"
    dst = store.root / "manifests/registry.ollama.ai/team/dst/v2"
    assert dst.read_bytes() == src.read_bytes()
    assert run(store.get("team/dst:v2")).digest == run(store.get("src")).digest


@pytest.mark.parametrize(
    ("source", "destination", "error", "message"),
    [
        ("missing", "dst", NotFoundError, 'model "missing" not found'),
        ("bad name", "dst", BadRequestError, 'source "bad name" is invalid'),
        ("src", "../escape", BadRequestError, 'destination "../escape" is invalid'),
        ("missing", "bad/name/is/long", BadRequestError, 'destination "bad/name/is/long" is invalid'),
    ],
)
def test_copy_errors(store, source, destination, error, message):
    create(store, {"model": "src", "files": {"m.gguf": upload(store, TINY)}})
    with pytest.raises(error) as info:
        run(store.copy(source, destination))
    assert info.value.message == message


def test_delete_removes_manifest_dirs_and_unshared_blobs(store):
    model = upload(store, TINY)
    create(store, {"model": "keep", "files": {"m.gguf": model}, "system": "keep"})
    create(store, {"model": "user/gone", "files": {"m.gguf": model}, "system": "gone"})
    gone = run(store.get("user/gone"))
    gone_only = {layer["digest"] for layer in gone.manifest["layers"]} | {gone.manifest["config"]["digest"]}
    gone_only -= {layer["digest"] for layer in run(store.get("keep")).manifest["layers"]}
    run(store.delete("User/Gone"))
    assert not (store.root / "manifests/registry.ollama.ai/user").exists()
    assert all(not store.blob_path(d).exists() for d in gone_only)
    assert store.blob_path(model).exists()  # still used by "keep"
    run(store.delete("keep"))
    assert files_under(store.root) == set()
    assert (store.root / "manifests").is_dir()


def test_delete_errors(store):
    with pytest.raises(NotFoundError) as info:
        run(store.delete("missing"))
    assert info.value.message == "model 'missing' not found"
    with pytest.raises(BadRequestError) as info:
        run(store.delete("bad name"))
    assert info.value.message == 'name "bad name" is invalid'


def test_delete_a_damaged_manifest(store):
    bad = store.root / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(CorralError):
        run(store.get("bad"))
    run(store.delete("bad"))
    assert not bad.exists()


def test_write_manifest_keeps_exact_bytes(store):
    from corral.store.names import ModelName

    raw = b'{"schemaVersion":2,  "layers":[]}\n'
    digest = run(store.write_manifest(ModelName.parse("x/y:z"), raw))
    path = store.root / "manifests/registry.ollama.ai/x/y/z"
    assert path.read_bytes() == raw
    assert digest == hashlib.sha256(raw).hexdigest()
    assert (
        run(store.write_manifest(ModelName.parse("x/y:z"), {"a": [1, 2]})) == hashlib.sha256(b'{"a":[1,2]}').hexdigest()
    )


# --- the real model -------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_MODEL.is_file(), reason="real test model not present")
def test_real_model_round_trip(store):
    data = REAL_MODEL.read_bytes()
    digest = upload(store, data)
    statuses = create(store, {"model": "smollm2:135m", "files": {"SmolLM2-135M-Instruct.Q4_1.gguf": digest}})
    assert statuses == ["parsing GGUF", f"using existing layer {digest}", "writing manifest", "success"]
    [entry] = run(store.tags())
    assert entry["name"] == "smollm2:135m"
    assert entry["details"]["family"] == "llama"
    assert entry["details"]["parameter_size"] == "134.52M"
    assert entry["details"]["quantization_level"] == "Q4_1"
    show = run(store.show("smollm2:135m"))
    assert show["model_info"]["llama.context_length"] == 8192
    assert show["model_info"]["general.parameter_count"] == 134515008
    assert show["model_info"]["tokenizer.ggml.tokens"] is None
    assert len(show["tensors"]) == 272
