"""Publishing to the Hub, proved end to end against the loopback Hub of tests/hub_server.py (no internet).

scripts/push_to_hub.py runs in a subprocess and the checkpoint is loaded back in fresh subprocesses with an empty
HF_HOME, because huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET when it is imported. The failure cases run
concurrently (each in its own process) to keep the file fast.
"""

from __future__ import annotations

import json
import math
import os
import re
import site
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedTokenizerFast

from hamiltonian_transformer import hub
from tests.hub_server import HubServer

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "push_to_hub.py"
ALICE, BOB = "hf_alice_write_token", "hf_bob_write_token"
SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
PROBE_TEXT = "w5 w6 w7 w8 w9 w10"
PUSHED_REPO = "alice/tiny-lm"

# The model the end-to-end test trains, publishes and loads back. LEAD: once the preset exists, change this line to
# TINY_MODEL = "hamiltonian_transformer"; the trust_remote_code test then also proves the shipped code loads alone.
TINY_MODEL = "hamiltonian_transformer"


def build_tiny_model(kind: str) -> torch.nn.Module:
    if kind == "hamiltonian_transformer":
        from hamiltonian_transformer import HamiltonianTransformerConfig, HamiltonianTransformerForCausalLM

        return HamiltonianTransformerForCausalLM(HamiltonianTransformerConfig.from_preset("tiny"))
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=99, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `<unk> <pad> <s> </s> w4 ... w{vocab_size-1}`, built offline."""
    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3} | {f"w{i}": i for i in range(4, vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


@dataclass
class TinyCheckpoint:
    path: Path
    probe_ids: torch.Tensor  # (1, T)
    logits: torch.Tensor  # (1, T, V) of the trained model in this process
    eval_loss: float
    weight_bytes: int


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> TinyCheckpoint:
    """A briefly trained tiny causal LM saved like a training run: weights, tokenizer, run JSONs, optimizer state."""
    torch.manual_seed(0)
    model = build_tiny_model(TINY_MODEL)
    vocab = model.config.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.randint(4, vocab, (8, 16))
    for _ in range(3):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    held_out = torch.randint(4, vocab, (8, 16))
    tokenizer = build_tokenizer(vocab)
    probe_ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child processes that load it (hub_env): the same summation order, bit for bit
    with torch.no_grad():
        eval_loss = model(input_ids=held_out, labels=held_out).loss.item()
        logits = model(probe_ids).logits
    torch.set_num_threads(threads)

    path = tmp_path_factory.mktemp("run") / "tiny-checkpoint"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "eval_results.json").write_text(json.dumps({
        "eval_loss": eval_loss, "eval_runtime": 0.01, "epoch": 1.0, "dataset": "uniform random tokens",
        "dataset_split": "held-out batch", "train_tokens": 3 * batch.numel()}))
    (path / "training_args.json").write_text(json.dumps({"learning_rate": 1e-2, "max_steps": 3, "seed": 0}))
    torch.save(optimizer.state_dict(), path / "optimizer.pt")  # training state: must not be uploaded
    weight_bytes = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return TinyCheckpoint(path, probe_ids, logits, eval_loss, weight_bytes)


@pytest.fixture(scope="module")
def hub_server():
    """The Hub alice pushes to: bob owns bob/public-model, and commits to alice/flaky fail with a 500."""
    with HubServer(tokens={ALICE: "alice", BOB: "bob"}, fail_commits={"alice/flaky": 500}) as server:
        server.add_repo("bob/public-model", {"README.md": b"bob's model\n", "config.json": b"{}\n"})
        yield server


@pytest.fixture(scope="module")
def silent_hub():
    """A Hub that the runs which must not touch the network point at: it must see no request at all."""
    with HubServer(tokens={ALICE: "alice"}) as server:
        yield server


def hub_env(endpoint: str, home: Path, token: str | None) -> dict[str, str]:
    """Environment of a child process talking to `endpoint`, with its own empty cache and no inherited HF_ settings."""
    home.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HOME": str(home), "PYTHONPATH": str(REPO_ROOT),
            # one thread: logits compared bit for bit with the parent's do not depend on how busy the cores are
            "OMP_NUM_THREADS": "1"}
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_all(commands: dict[str, tuple[list, dict[str, str], Path]]) -> dict[str, subprocess.CompletedProcess]:
    """Run `python ARGS` for every (args, env, cwd) at once; name -> finished process. Each child imports torch and
    transformers (seconds of CPU), so running them side by side keeps this file fast."""
    procs = {name: subprocess.Popen([sys.executable, *map(str, args)], env=env, cwd=cwd, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, env, cwd) in commands.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return results


def copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.fixture(scope="module")
def script_runs(tiny_checkpoint, hub_server, silent_hub, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every run of scripts/push_to_hub.py, at once: the push the end-to-end tests load back, its three kinds of
    failure (local refusal, missing token, the Hub failing at the commit) and a dry run. The translation of each HTTP
    status and network error is tested in-process below."""
    root = tmp_path_factory.mktemp("runs")
    broken = copy_checkpoint(tiny_checkpoint.path, root / "broken-checkpoint")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    ckpt = tiny_checkpoint.path
    cases = {
        "push": ([ckpt, PUSHED_REPO, "--max_shard_size", tiny_checkpoint.weight_bytes // 3,
                  "--commit_message", "Upload tiny test checkpoint"], hub_server.url, ALICE),
        "missing_token": ([ckpt, "alice/no-token"], silent_hub.url, None),
        "server_error": ([ckpt, "alice/flaky"], hub_server.url, ALICE),
        "unloadable": ([broken, "alice/broken"], silent_hub.url, ALICE),
        "dry_run": ([ckpt, "alice/dry", "--dry_run"], silent_hub.url, None),
    }
    # one thread each: the runs share two cores
    return run_all({name: ([SCRIPT, *args], hub_env(endpoint, root / f"home-{name}", token) | {"OMP_NUM_THREADS": "1"},
                           REPO_ROOT) for name, (args, endpoint, token) in cases.items()})


@pytest.fixture(scope="module")
def pushed(script_runs) -> str:
    """The repo id that the script pushed the tiny checkpoint to, in shards of a third of its weights."""
    result = script_runs["push"]
    assert result.returncode == 0, result.stderr
    assert "committed: " in result.stdout
    return PUSHED_REPO


def test_push_commits_weights_config_tokenizer_and_run_files_in_one_commit(pushed, hub_server, tiny_checkpoint):
    files = hub_server.files(pushed)
    local = tiny_checkpoint.path
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "eval_results.json", "training_args.json", *(p.name for p in local.glob("*.py"))):
        assert files[name] == (local / name).read_bytes(), f"{name} differs from the checkpoint's"
    index = json.loads(files[hub.SAFETENSORS_INDEX])
    shards = sorted(name for name in files if SHARD_RE.match(name))
    assert len(shards) >= 2 and sorted(set(index["weight_map"].values())) == shards
    assert "optimizer.pt" not in files and "model.safetensors" not in files
    assert hub_server.commit_messages(pushed) == ["initial commit", "Upload tiny test checkpoint"]
    tree = {f.path: f for f in HfApi(endpoint=hub_server.url).list_repo_tree(pushed, token=ALICE)}
    assert all(tree[name].lfs is not None for name in shards), "weights must go through LFS"


def test_card_metadata_names_library_task_license_and_measured_results(pushed, hub_server, tiny_checkpoint):
    readme = hub_server.files(pushed)["README.md"].decode()
    metadata = yaml.safe_load(readme.split("---\n")[1])
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "text-generation"
    assert metadata["license"] == "apache-2.0"
    assert "datasets" not in metadata  # "uniform random tokens" is not a Hub dataset id
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"perplexity": round(math.exp(tiny_checkpoint.eval_loss), 4),
                       "loss": round(tiny_checkpoint.eval_loss, 4)}
    assert f'from_pretrained("{pushed}"' in readme
    assert any(r.path == "/api/validate-yaml" for r in hub_server.requests), "the card's YAML was not validated"


LOAD_INSTALLED = """
import sys, torch
import hamiltonian_transformer  # the package is installed: importing it registers its model types
from transformers import AutoModelForCausalLM, AutoTokenizer
repo, out, text = sys.argv[1:]
model, tokenizer = AutoModelForCausalLM.from_pretrained(repo), AutoTokenizer.from_pretrained(repo)
ids = tokenizer(text, return_tensors="pt").input_ids
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(ids).logits, "module": type(model).__module__}, out)
"""

LOAD_REMOTE_CODE = """
import sys, torch
try:
    import hamiltonian_transformer
except ImportError:
    print("package hidden")
from transformers import AutoModelForCausalLM, AutoTokenizer
repo, out, text = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
ids = tokenizer(text, return_tensors="pt").input_ids
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(ids).logits, "module": type(model).__module__}, out)
"""


@pytest.fixture(scope="module")
def loaded_back(pushed, hub_server, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Load the pushed repo in two fresh processes with empty caches: with the package installed, and with
    trust_remote_code=True where it cannot be imported. Name -> (process, file with its ids, logits, model module)."""
    root = tmp_path_factory.mktemp("loads")
    installed = hub_env(hub_server.url, root / "home-installed", ALICE)
    # -S skips site-packages' .pth files, so the editable install's path hook is not there; site-packages itself
    # stays on PYTHONPATH for torch and transformers, and the working directory is outside the repository.
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    hidden = hub_env(hub_server.url, root / "home-hidden", ALICE) | {"PYTHONPATH": os.pathsep.join(site_dirs)}
    outs = {"installed": root / "installed.pt", "remote_code": root / "remote_code.pt"}
    results = run_all({
        "installed": (["-c", LOAD_INSTALLED, pushed, outs["installed"], PROBE_TEXT], installed, REPO_ROOT),
        "remote_code": (["-S", "-c", LOAD_REMOTE_CODE, pushed, outs["remote_code"], PROBE_TEXT], hidden, root),
    })
    return {name: (results[name], outs[name]) for name in outs}


def test_pushed_model_loads_in_a_fresh_process_with_identical_logits(loaded_back, tiny_checkpoint):
    result, out = loaded_back["installed"]
    assert result.returncode == 0, result.stderr
    loaded = torch.load(out)
    assert torch.equal(loaded["ids"], tiny_checkpoint.probe_ids)
    assert torch.equal(loaded["logits"], tiny_checkpoint.logits)


def test_pushed_model_loads_with_trust_remote_code_where_the_package_cannot_be_imported(
        loaded_back, pushed, hub_server, tiny_checkpoint):
    result, out = loaded_back["remote_code"]
    assert result.returncode == 0, result.stderr
    assert "package hidden" in result.stdout, "hamiltonian_transformer was importable in the isolated process"
    loaded = torch.load(out)
    if "auto_map" in json.loads(hub_server.files(pushed)["config.json"]):
        assert loaded["module"].startswith("transformers_modules"), loaded["module"]
    assert torch.equal(loaded["logits"], tiny_checkpoint.logits)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("push_to_hub: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_token_is_refused_before_any_request_and_names_hf_token(script_runs, silent_hub):
    assert_one_line_error(script_runs["missing_token"], "HF_TOKEN", "--token")
    assert silent_hub.requests == []


def test_server_error_500_at_commit_claims_nothing_and_leaves_the_branch_unmoved(script_runs, hub_server):
    assert_one_line_error(script_runs["server_error"], "500", "nothing was committed")
    assert "committed: " not in script_runs["server_error"].stdout
    assert any(r.path == "/alice/flaky.git/info/lfs/objects/batch" for r in hub_server.requests), \
        "the failure should come after the LFS upload, at the commit"
    assert set(hub_server.files("alice/flaky")) == {".gitattributes"}
    assert hub_server.commit_messages("alice/flaky") == ["initial commit"]


def test_checkpoint_that_does_not_load_is_refused_before_any_request(script_runs, silent_hub):
    assert_one_line_error(script_runs["unloadable"], "does not load")
    assert silent_hub.requests == []


def test_dry_run_prints_files_and_card_and_sends_nothing(script_runs, silent_hub, tiny_checkpoint):
    result = script_runs["dry_run"]
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval_results.json", "README.md",
                 "library_name: transformers", "model-index:"):
        assert name in result.stdout
    assert "optimizer.pt" in result.stdout and "not uploaded" in result.stdout
    assert silent_hub.requests == []


@pytest.fixture
def api(hub_server, monkeypatch) -> HfApi:
    """A client for in-process uploads. huggingface_hub reads HF_HUB_DISABLE_XET and HF_HUB_OFFLINE at import, so
    their values are set directly: uploads take the LFS path and may reach the loopback Hub."""
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    return HfApi(endpoint=hub_server.url)


@pytest.fixture(scope="module")
def plan(tiny_checkpoint):
    plan = hub.plan_push(tiny_checkpoint.path, "alice/tiny-lm")
    yield plan
    plan.cleanup()


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_rejected_token_401_is_reported_in_one_line_naming_hf_token(api, hub_server, plan):
    with pytest.raises(hub.HubPushError) as err:
        hub.upload(plan, "alice/bad-token", token="hf_not_a_valid_token", api=api)
    assert_one_line(err, "401", "HF_TOKEN", "nothing was committed")
    assert "alice/bad-token" not in hub_server.repos


def test_pushing_to_someone_elses_repo_403_is_reported_and_leaves_it_unchanged(api, hub_server, plan):
    before = hub_server.files("bob/public-model")
    with pytest.raises(hub.HubPushError) as err:
        hub.upload(plan, "bob/public-model", token=ALICE, api=api)
    assert_one_line(err, "403", "belongs to someone else", "nothing was committed")
    assert hub_server.files("bob/public-model") == before
    assert hub_server.commit_messages("bob/public-model") == ["initial commit", "Seed files"]


def test_connection_refused_is_reported_in_one_line_naming_the_endpoint(api, plan):
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(hub.HubPushError) as err:
        hub.upload(plan, "alice/offline", token=ALICE, api=HfApi(endpoint=endpoint))
    assert_one_line(err, f"cannot reach the Hub at {endpoint}", "HF_ENDPOINT", "nothing was committed")


def test_card_metadata_the_hub_rejects_is_reported_before_any_file_is_uploaded(api, hub_server, tiny_checkpoint):
    plan = hub.plan_push(tiny_checkpoint.path, "alice/bad-license", license="Apache 2.0")
    try:
        with pytest.raises(hub.HubPushError) as err:
            hub.upload(plan, "alice/bad-license", token=ALICE, api=api)
    finally:
        plan.cleanup()
    assert_one_line(err, "rejected the model card metadata", "license")
    assert not any(r.path.startswith("/api/models/alice/bad-license/preupload") for r in hub_server.requests)
    assert set(hub_server.files("alice/bad-license")) == {".gitattributes"}


def test_push_to_a_branch_leaves_main_unchanged(api, hub_server, tiny_checkpoint):
    plan = hub.plan_push(tiny_checkpoint.path, "alice/branchy")
    try:
        hub.upload(plan, "alice/branchy", token=ALICE, revision="dev", api=api)
    finally:
        plan.cleanup()
    assert set(hub_server.files("alice/branchy", "main")) == {".gitattributes"}
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_server.files("alice/branchy", "dev"))


def test_sharded_push_deletes_the_single_weights_file_of_an_earlier_push(api, hub_server, tiny_checkpoint):
    for max_shard_size in (hub.DEFAULT_MAX_SHARD_SIZE, tiny_checkpoint.weight_bytes // 3):
        plan = hub.plan_push(tiny_checkpoint.path, "alice/resharded", max_shard_size=max_shard_size)
        try:
            hub.upload(plan, "alice/resharded", token=ALICE, api=api)
        finally:
            plan.cleanup()
    files = hub_server.files("alice/resharded")
    assert "model.safetensors" not in files and hub.SAFETENSORS_INDEX in files
    assert len(hub_server.commit_messages("alice/resharded")) == 3


def test_checkpoint_missing_a_weight_is_refused_instead_of_initialised_at_random(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint.path, tmp_path / "ckpt")
    weights = load_file(folder / "model.safetensors")
    dropped = sorted(weights)[-1]
    save_file({k: v for k, v in weights.items() if k != dropped}, folder / "model.safetensors", {"format": "pt"})
    with pytest.raises(hub.CheckpointError, match=re.escape(dropped)):
        hub.load_checkpoint(folder)


def test_auto_map_naming_a_module_the_folder_lacks_is_refused(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint.path, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_missing.MissingConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(hub.CheckpointError, match="configuration_missing.py"):
        hub.load_checkpoint(folder)


def test_stale_weight_files_are_only_replaced_weights():
    remote = [".gitattributes", "README.md", "config.json", "model.safetensors", "pytorch_model.bin",
              "model-00001-of-00002.safetensors", "notes/model.safetensors"]
    uploaded = ["config.json", "model-00001-of-00002.safetensors", hub.SAFETENSORS_INDEX]
    assert hub.stale_weight_files(remote, uploaded) == ["model.safetensors", "pytorch_model.bin"]


@pytest.mark.parametrize("text", ["five gigabytes", "0", "-3MB"])
def test_max_shard_size_that_is_not_a_size_is_refused(text):
    with pytest.raises(hub.CheckpointError, match="max_shard_size"):
        hub.parse_max_shard_size(text)


def test_eval_metrics_derive_perplexity_from_loss_and_skip_timing_keys():
    metrics = hub.eval_metrics({"eval_loss": 2.0, "eval_accuracy": 0.5, "eval_runtime": 3.0, "epoch": 1.0},
                               causal_lm=True)
    assert metrics == {"perplexity": math.exp(2.0), "loss": 2.0, "accuracy": 0.5}
    assert "perplexity" not in hub.eval_metrics({"eval_loss": 2.0}, causal_lm=False)


def fake_config(model_type: str, architecture: str) -> PretrainedConfig:
    """A config of `model_type` as saved with auto_map, without needing the model classes."""
    config_class = type("FakeConfig", (PretrainedConfig,), {"model_type": model_type})
    return config_class(architectures=[architecture], auto_map={"AutoConfig": f"configuration_{model_type}.Config"},
                        hidden_size=32, num_hidden_layers=2, vocab_size=99, max_position_embeddings=64,
                        attn_layer_idx=[1], integrator="leapfrog", initial_momentum="learned")


@pytest.mark.parametrize("model_type, prefix", [("hamiltonian_transformer", "HamiltonianTransformer"), ("h3", "H3")])
@pytest.mark.parametrize("head, task, metric", [("ForCausalLM", "text-generation", "perplexity"),
                                                ("ForSequenceClassification", "text-classification", "accuracy")])
def test_card_template_renders_metadata_loading_both_ways_data_and_results(model_type, prefix, head, task, metric):
    eval_results = {"eval_loss": 2.0, "eval_accuracy": 0.75, "dataset": "wikitext", "dataset_config": "wikitext-2",
                    "dataset_split": "validation", "train_tokens": 123456}
    card = hub.render_card(fake_config(model_type, prefix + head), "alice/model", eval_results,
                           {"learning_rate": 3e-4, "model_name_or_path": "alice/base"}, num_parameters=1_234_567,
                           has_tokenizer=True)
    text = str(card)
    metadata = yaml.safe_load(text.split("---\n")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == task
    assert metadata["license"] == "apache-2.0" and metadata["datasets"] == ["wikitext"]
    assert metadata["base_model"] == "alice/base"
    assert {model_type, "custom_code"} <= set(metadata["tags"])
    results = metadata["model-index"][0]["results"][0]
    assert results["task"]["type"] == task and results["dataset"]["split"] == "validation"
    assert metric in {m["type"] for m in results["metrics"]}
    auto_class = "AutoModelFor" + head.removeprefix("For")
    assert f'{auto_class}.from_pretrained("alice/model")' in text
    assert f'{auto_class}.from_pretrained("alice/model", trust_remote_code=True)' in text
    assert "import hamiltonian_transformer" in text
    assert "123,456 tokens" in text and "1.2M parameters" in text and "## Limitations" in text
    assert "{{" not in text and "{%" not in text
    described = {"h3": "here layers 1", "hamiltonian_transformer": "uses the `leapfrog` integrator"}[model_type]
    assert described in " ".join(text.split())


def test_base_model_that_is_a_local_folder_is_not_put_in_the_metadata(tmp_path):
    card = hub.render_card(fake_config("h3", "H3ForCausalLM"), "alice/model", {},
                           {"model_name_or_path": str(tmp_path)}, num_parameters=10, has_tokenizer=False)
    assert "base_model" not in yaml.safe_load(str(card).split("---\n")[1])
    assert "No evaluation results were recorded" in str(card)


@pytest.mark.parametrize("progress, says", [
    ({"steps": 90, "max_steps": 450, "stop_reason": "--max_train_minutes 7.0 reached"},
     "**Training was cut short**: 90 of the 450 planned optimizer steps ran (--max_train_minutes 7.0 reached)"),
    ({"steps": 450, "max_steps": 450, "stop_reason": None}, "Training ran all 450 planned optimizer steps."),
])
def test_card_says_whether_training_ran_its_planned_steps(progress, says):
    card = hub.render_card(fake_config("h3", "H3ForCausalLM"), "alice/model", {"dataset": "wikitext"}, progress,
                           num_parameters=10, has_tokenizer=False)
    text = " ".join(str(card).split())
    assert says in text
    assert ("cut short" in text) == (progress["steps"] < progress["max_steps"])


def test_card_names_a_local_base_model_in_the_text_only(tmp_path):
    card = hub.render_card(fake_config("h3", "H3ForSequenceClassification"), "alice/model", {},
                           {"model_name_or_path": str(tmp_path)}, num_parameters=10, has_tokenizer=False)
    assert f"Fine-tuned from the local checkpoint `{tmp_path}`" in " ".join(str(card).split())


def test_written_card_is_the_pushed_card_of_the_folder_loaded_by_its_path(tiny_checkpoint, tmp_path):
    folder = tmp_path / "with-card"
    folder.mkdir()
    for path in tiny_checkpoint.path.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    written = hub.write_model_card(folder).read_text()
    assert written.startswith("---\n") and f'from_pretrained("{folder.as_posix()}")' in written
    plan = hub.plan_push(folder, "alice/with-card")
    try:
        assert "README.md" not in plan.files  # the push renders its own, for the repository
        assert str(plan.card) == hub.write_model_card(folder, "alice/with-card").read_text()
    finally:
        plan.cleanup()
