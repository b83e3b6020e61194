"""The checkpoint directory: LitGPT .pth compatibility, streaming conversion memory, atomic writes, errors."""

import subprocess
import sys
import zipfile

import pytest
import torch

from litgpt_lite.checkpoint import SafetensorsReader, save_checkpoint
from litgpt_lite.config import Config
from litgpt_lite.errors import UserError
from litgpt_lite.loading import load_model
from litgpt_lite.model import GPT


def tiny_config(**kw) -> Config:
    base = dict(
        block_size=32,
        vocab_size=64,
        padded_vocab_size=64,
        n_layer=2,
        n_head=4,
        n_embd=32,
        n_query_groups=2,
        mlp_class="LLaMAMLP",
        norm_class="RMSNorm",
        intermediate_size=48,
    )
    return Config(**{**base, **kw})


def test_save_load_roundtrip_and_tied(tmp_path):
    for tied in (False, True):
        torch.manual_seed(0)
        model = GPT(tiny_config(tie_embeddings=tied)).eval()
        save_checkpoint(model, model.config, tmp_path / str(tied))
        loaded = load_model(tmp_path / str(tied))
        idx = torch.randint(0, 64, (1, 7))
        with torch.no_grad():
            torch.testing.assert_close(loaded(idx), model(idx))
        assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == tied


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_litgpt_pth_loads_without_unpickling_code(tmp_path, zip_format):
    """A LitGPT checkpoint (lit_model.pth, older `attn.attn` names) loads with torch.load(weights_only=True), also in
    the legacy pickle format of torch.save(_use_new_zipfile_serialization=False), which cannot be memory-mapped (it
    failed with torch's mmap message before); a malicious one is refused in either format."""
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    model.config.save(tmp_path / "model_config.yaml")
    state = {k.replace(".attn.qkv.", ".attn.attn."): v for k, v in model.state_dict().items()}
    saved = state if zip_format else {"model": state}
    torch.save(saved, tmp_path / "lit_model.pth", _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(tmp_path / "lit_model.pth") == zip_format
    loaded = load_model(tmp_path)
    idx = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model(idx))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "lit_model.pth", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UserError, match="Cannot read .*lit_model.pth: UnpicklingError") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    model = GPT(tiny_config())
    save_checkpoint(model, model.config, tmp_path)
    weights = tmp_path / "lit_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="corrupt or truncated"):
        SafetensorsReader(weights)


def test_shape_mismatch_names_the_tensor(tmp_path):
    model = GPT(tiny_config())
    save_checkpoint(model, model.config, tmp_path)
    tiny_config(intermediate_size=40).save(tmp_path / "model_config.yaml")
    with pytest.raises(UserError, match=r"mlp.fc_1.weight has shape \(48, 32\) but the config needs \(40, 32\)"):
        load_model(tmp_path)


def test_convert_streams_under_1_5x_model_size(smollm2_hf, tmp_path):
    """convert_to_litgpt's peak RSS, imports included, stays under 1.5x the weights on disk."""
    on_disk = (smollm2_hf / "model.safetensors").stat().st_size
    # A forked child starts with its parent's peak RSS (and exec keeps it), so the child resets its own peak first:
    # otherwise a big pytest process (after the quantization tests, say) is what gets measured.
    code = (
        "open('/proc/self/clear_refs', 'w').write('5'); "
        "from litgpt_lite.convert import convert_to_litgpt; "
        f"convert_to_litgpt({str(smollm2_hf)!r}, out_dir={str(tmp_path / 'out')!r}); "
        "print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    assert peak < 1.5 * on_disk, f"peak RSS {peak / 1e6:.0f} MB vs {on_disk / 1e6:.0f} MB on disk"


@pytest.mark.parametrize("expected_tensors", [1, 64])
def test_streaming_writer_output_reads_everywhere(tmp_path, expected_tensors):
    """Header in its reserve, or (too many tensors) moved in front of the data: safetensors itself reads both."""
    from safetensors.torch import load_file

    from litgpt_lite.checkpoint import SafetensorsWriter

    tensors = {f"t{i}": torch.randn(3, i + 1).to(torch.bfloat16 if i % 2 else torch.float32) for i in range(40)}
    tensors["scalar"] = torch.tensor(3, dtype=torch.int64)
    writer = SafetensorsWriter(tmp_path / "w.safetensors", expected_tensors=expected_tensors)
    for name, t in tensors.items():
        writer.add(name, t)
    writer.close()
    reader = SafetensorsReader(tmp_path / "w.safetensors")
    for loaded in (load_file(tmp_path / "w.safetensors"), {k: reader.get_tensor(k) for k in tensors}):
        assert loaded.keys() == tensors.keys()
        for name, t in tensors.items():
            assert torch.equal(loaded[name], t)
