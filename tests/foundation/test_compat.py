"""Each compatibility patch: applied where its problem is present, a no-op where it is absent.

Every case that applies patches runs in a fresh interpreter, since they act on imported
modules.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from support import REPO, TF457_PYTHON, requires_fixtures, requires_tf457


def run_python(code: str, tmp_path, extra_path: str | None = None,
               python: str = sys.executable) -> str:
    env_path = [str(REPO)] + ([extra_path] if extra_path else [])
    # no torch override of the weights-only default may leak in: the safe loader stays on
    env = {k: v for k, v in os.environ.items() if "WEIGHTS_ONLY" not in k}
    env["PYTHONPATH"] = os.pathsep.join(env_path)
    proc = subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_bf16_query_added_when_missing(tmp_path):
    out = run_python("""
        import torch
        print("before", hasattr(torch.cpu, "is_bf16_supported"))
        from xtuner_llava_swap import compat
        print("after", torch.cpu.is_bf16_supported(), "torch_cpu_bf16_query" in compat.APPLIED)
    """, tmp_path)
    assert "before False" in out and "after True True" in out


def test_bf16_query_left_alone_when_present(tmp_path):
    out = run_python("""
        import torch
        torch.cpu.is_bf16_supported = lambda: "theirs"
        from xtuner_llava_swap import compat
        print(torch.cpu.is_bf16_supported(), "torch_cpu_bf16_query" in compat.APPLIED)
    """, tmp_path)
    assert out.split() == ["theirs", "False"]


def test_internvl_stand_in_when_torchvision_cannot_import(tmp_path):
    out = run_python("""
        import importlib.util
        print("torchvision", importlib.util.find_spec("torchvision") is not None)
        import xtuner_llava_swap
        import xtuner.dataset  # imports the InternVL module unconditionally
        from xtuner.dataset.internvl_dataset import InternVL_V1_5_Dataset
        try:
            InternVL_V1_5_Dataset()
        except ImportError as err:
            print("clear error:", "torchvision" in str(err))
        from transformers import CLIPImageProcessor  # still works
    """, tmp_path)
    assert "torchvision False" in out and "clear error: True" in out


def test_working_torchvision_is_never_shadowed(tmp_path):
    fake = tmp_path / "site"
    (fake / "torchvision" / "transforms").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text("REAL = True\n")
    (fake / "torchvision" / "transforms" / "__init__.py").write_text("")
    (fake / "torchvision" / "transforms" / "functional.py").write_text(
        "class InterpolationMode:\n    BICUBIC = 'bicubic'\n")
    out = run_python("""
        import xtuner_llava_swap
        from xtuner_llava_swap import compat
        import xtuner.dataset.internvl_dataset as m
        print("applied", "internvl_without_torchvision" in compat.APPLIED)
        print("real module", m.__file__.endswith("xtuner/dataset/internvl_dataset.py"))
    """, tmp_path, extra_path=str(fake))
    assert "applied False" in out and "real module True" in out


def test_amp_optim_wrapper_becomes_fp32_on_cpu(tmp_path):
    out = run_python("""
        import torch
        import xtuner_llava_swap
        from mmengine.optim import AmpOptimWrapper, OptimWrapper
        w = AmpOptimWrapper(optimizer=torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1),
                            loss_scale="dynamic", dtype="float16")
        print(type(w).__name__)
    """, tmp_path)
    assert out.strip() == "OptimWrapper"


def test_amp_optim_wrapper_untouched_with_an_accelerator(tmp_path):
    out = run_python("""
        import mmengine.device
        mmengine.device.is_cuda_available = lambda: True   # pretend a GPU is present
        from xtuner_llava_swap import compat
        from mmengine.optim import AmpOptimWrapper
        print("amp_optim_wrapper_on_cpu" in compat.APPLIED,
              getattr(AmpOptimWrapper.__init__, "_cpu_fallback", False))
    """, tmp_path)
    assert out.split() == ["False", "False"]


SAVE_MMENGINE_LIKE_CHECKPOINT = """
    import numpy as np, torch
    from mmengine.logging.history_buffer import HistoryBuffer
    buf = HistoryBuffer(); buf.update(1.5); buf.update(np.float64(2.0))
    torch.save({"meta": {"iter": 3, "seed": np.int64(7)}, "state_dict": {"w": torch.ones(2)},
                "message_hub": {"log_scalars": {"train/loss": buf}}}, "ckpt.pth")
"""


def test_safe_loader_reads_mmengine_checkpoints_once_allowed(tmp_path):
    out = run_python(SAVE_MMENGINE_LIKE_CHECKPOINT + """
    import pickle
    try:
        torch.load("ckpt.pth")
    except pickle.UnpicklingError:
        print("refused before")
    from xtuner_llava_swap import compat
    ckpt = torch.load("ckpt.pth")            # the default: weights_only=True
    print("loaded", ckpt["meta"]["iter"], "safe_checkpoint_globals" in compat.APPLIED)
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    torch.save({"x": Evil()}, "evil.pth")
    try:
        torch.load("evil.pth")
    except pickle.UnpicklingError:
        print("arbitrary globals still refused")
    class Sneaky:
        def __reduce__(self):
            return (getattr, (HistoryBuffer, "__init__"))
    torch.save({"x": Sneaky()}, "sneaky.pth")
    try:
        torch.load("sneaky.pth")
    except pickle.UnpicklingError:
        print("getattr limited to HistoryBuffer statistics")
    """, tmp_path)
    assert "refused before" in out and "loaded 3 True" in out
    assert "arbitrary globals still refused" in out and "executed" not in out
    assert "getattr limited to HistoryBuffer statistics" in out


def test_safe_globals_not_added_twice(tmp_path):
    out = run_python("""
        import torch
        from xtuner_llava_swap import compat
        import mmengine.optim, xtuner  # every patch's module: each patch applied on import
        before = len(torch.serialization.get_safe_globals())
        print(compat.apply_all(), len(torch.serialization.get_safe_globals()) == before)
    """, tmp_path)
    assert out.strip().splitlines()[-1] == "[] True"


@requires_fixtures
def test_bos_none_tokenizer_encodes_without_bos(tmp_path):
    out = run_python("""
        import xtuner_llava_swap
        from xtuner.dataset.utils import encode_fn
        from transformers import AutoTokenizer
        from xtuner_llava_swap.testing.tiny import fixtures_dir
        tok = AutoTokenizer.from_pretrained(
            fixtures_dir() / "qwen2-1.5b-instruct-finetune-export", use_fast=False)
        print(type(tok).__name__, tok.bos_token_id)
        out = encode_fn({"conversation": [{"input": "Hi", "output": "Yo"}]}, tok, 64)
        print(out["input_ids"] == tok.encode("Hi", add_special_tokens=False)
              + tok.encode("Yo", add_special_tokens=False) + [tok.eos_token_id])
    """, tmp_path)
    assert out.split() == ["Qwen2Tokenizer", "None", "True"]


@requires_fixtures
def test_bos_tokenizers_keep_their_bos(tmp_path):
    out = run_python("""
        import xtuner_llava_swap
        from xtuner.dataset.utils import encode_fn
        from transformers import LlamaTokenizer
        from xtuner_llava_swap.testing.tiny import fixtures_dir
        tok = LlamaTokenizer.from_pretrained(fixtures_dir() / "llama-2")
        out = encode_fn({"conversation": [{"input": "Hi", "output": "Yo"}]}, tok, 64)
        print(out["input_ids"][0] == tok.bos_token_id == 1)
    """, tmp_path)
    assert out.strip() == "True"


def test_cfg_options_rebind_only_when_asked(tmp_path):
    (tmp_path / "cfg.py").write_text(textwrap.dedent("""
        llm_name_or_path = "org/big-model"
        other = "org/other"
        tokenizer = dict(pretrained_model_name_or_path=llm_name_or_path)
        model = dict(llm=dict(pretrained_model_name_or_path=llm_name_or_path, other=other),
                     hooks=[dict(tokenizer=tokenizer)])
    """))
    out = run_python("""
        import os
        os.environ.pop("XTUNER_LLAVA_SWAP_REBIND", None)
        from mmengine.config import Config
        mmengines_own = Config.merge_from_dict
        import xtuner_llava_swap
        from xtuner_llava_swap import cfg_options_rebind

        def merged():
            cfg = Config.fromfile("cfg.py")
            cfg.merge_from_dict({"llm_name_or_path": "/tiny/llm", "model.llm.other": "explicit"})
            print(cfg.llm_name_or_path, cfg.tokenizer.pretrained_model_name_or_path,
                  cfg.model.llm.pretrained_model_name_or_path,
                  cfg.model.hooks[0].tokenizer.pretrained_model_name_or_path,
                  cfg.model.llm.other, cfg.other)

        print("mmengine's own:", Config.merge_from_dict is mmengines_own)
        merged()
        os.environ["XTUNER_LLAVA_SWAP_REBIND"] = "1"   # what the package's import runs then
        cfg_options_rebind.install_if_asked()
        print("mmengine's own:", Config.merge_from_dict is mmengines_own)
        merged()
    """, tmp_path)
    assert out.strip().splitlines()[-4:] == [
        "mmengine's own: True",
        "/tiny/llm org/big-model org/big-model org/big-model explicit org/other",
        "mmengine's own: False",
        "/tiny/llm /tiny/llm /tiny/llm /tiny/llm explicit org/other",
    ]


def test_startup_hook_patches_xtuner_in_a_plain_interpreter(tmp_path):
    out = run_python("""
        import sys
        import xtuner_llava_swap_startup        # what the .pth line does at startup
        assert "xtuner_llava_swap" not in sys.modules
        import xtuner
        print("plugin loaded:", "xtuner_llava_swap" in sys.modules)
        import xtuner.tools.train               # needs the InternVL stand-in
        print("train entry imported")
    """, tmp_path)
    assert "plugin loaded: True" in out and "train entry imported" in out


def test_export_reader_keeps_the_process_wide_allowlist(tmp_path):
    out = run_python(SAVE_MMENGINE_LIKE_CHECKPOINT + """
    from xtuner_llava_swap import compat
    from xtuner_llava_swap.checkpoint.checkpoint_files import safe_load
    safe_load("ckpt.pth")                    # a scoped allowlist, entered and left
    print("still loads", torch.load("ckpt.pth")["meta"]["iter"])
    """, tmp_path)
    assert "still loads 3" in out



HOSTILE_LLM_FOLDER = """
import json, pathlib
folder = pathlib.Path("hostile_llm")
folder.mkdir()
(folder / "config.json").write_text(json.dumps({
    "model_type": "qwen2", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
(folder / "configuration_evil.py").write_text(
    "import pathlib\\npathlib.Path('remote-code-ran').write_text('yes')\\n"
    "from transformers import Qwen2Config\\nclass EvilConfig(Qwen2Config):\\n    pass\\n")
from mmengine.config import ConfigDict
from xtuner.model.llava import LLaVAModel
def dispatch(trust):
    cfg = ConfigDict(pretrained_model_name_or_path=str(folder.resolve()))
    if trust is not None:
        cfg.trust_remote_code = trust
    LLaVAModel._dispatch_lm_model_cfg(LLaVAModel.__new__(LLaVAModel), cfg)
    return pathlib.Path("remote-code-ran").exists()
"""


def test_llava_model_runs_no_remote_code_unasked(tmp_path):
    out = run_python("import xtuner_llava_swap\nfrom xtuner_llava_swap import compat\n"
                     + HOSTILE_LLM_FOLDER + textwrap.dedent("""
        print("patched", "llava_remote_code_only_when_asked" in compat.APPLIED)
        print("unasked ran", dispatch(None))
        print("asked ran", dispatch(True))   # the config's own trust_remote_code=True
    """), tmp_path)
    assert "patched True" in out and "unasked ran False" in out and "asked ran True" in out


def test_llava_model_problem_present_without_the_patch(tmp_path):
    """The problem the patch fixes: stock xtuner (every other patch applied, the startup
    hook left out) runs the folder's code unasked."""
    out = run_python(textwrap.dedent(f"""
        import importlib.util, sys
        sys.meta_path[:] = [f for f in sys.meta_path
                            if type(f).__name__ != "_AfterImport"]
        spec = importlib.util.spec_from_file_location(
            "compat_alone", {str(REPO / "xtuner_llava_swap" / "compat.py")!r})
        compat = sys.modules["compat_alone"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compat)
        for patch in compat.PATCHES:
            if patch.name != "llava_remote_code_only_when_asked" and patch.needed():
                patch.apply()
        print("needed", compat._llava_trusts_remote_code())
    """) + HOSTILE_LLM_FOLDER + 'print("unasked ran", dispatch(False))\n', tmp_path)
    assert "needed True" in out and "unasked ran True" in out


@requires_tf457  # bitsandbytes >= 0.49, which quantizes nf4 on a CPU
def test_bnb_4bit_layer_trains_after_cpu_inference(tmp_path):
    out = run_python("""
        import torch, bitsandbytes as bnb
        from bitsandbytes.functional import has_avx512bf16
        from xtuner_llava_swap import compat
        applied = "bnb_cpu_4bit_training_layout" in compat.APPLIED
        print("applied where needed", applied == bool(has_avx512bf16()))
        torch.manual_seed(0)
        dense = torch.nn.Linear(64, 64)
        x = torch.randn(3, 64)

        def eval_then_train(bnb_default):
            layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False,
                                             quant_type="nf4")
            layer.bias = dense.bias
            layer = layer.to("cpu")  # quantizes
            if bnb_default:  # bitsandbytes' own setting, as without the patch
                layer.support_avx512bf16_for_cpu = bool(has_avx512bf16())
            packed = layer.weight.data.clone()
            with torch.no_grad():
                y = layer.eval()(x)  # EvaluateChatHook's generation
            kept = torch.equal(packed, layer.weight.data)
            x_grad = x.clone().requires_grad_(True)
            try:
                out = layer.train()(x_grad)
                out.sum().backward()
            except RuntimeError as err:
                return f"kept {kept} train crashed: {err}"
            return f"kept {kept} train ok {torch.equal(out, y)} {x_grad.grad.abs().sum() > 0}"

        print("patched:", eval_then_train(False))
        print("bnb default:", eval_then_train(True))
        print("avx512bf16", bool(has_avx512bf16()))
    """, tmp_path, python=str(TF457_PYTHON))
    assert "applied where needed True" in out, out
    assert "patched: kept True train ok True True" in out, out
    if "avx512bf16 True" in out:  # the problem, shown on bitsandbytes' default setting
        assert "bnb default: kept False train crashed" in out, out


def test_bnb_layout_patch_not_applied_where_bnb_cannot_quantize_on_cpu(tmp_path):
    out = run_python("""
        from importlib.metadata import version
        from xtuner_llava_swap import compat
        print(version("bitsandbytes"), "bnb_cpu_4bit_training_layout" in compat.APPLIED)
    """, tmp_path)
    assert out.split() == ["0.45.0", "False"]


DIST_ENV = """
    import os, socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch, torch.distributed as dist
    from mmengine.dist import init_dist
"""


def test_dist_init_joins_gloo_without_setting_a_cuda_device(tmp_path):
    out = run_python(DIST_ENV + """
    try:
        init_dist("pytorch", backend="gloo")      # mmengine as shipped
    except (AttributeError, RuntimeError, AssertionError) as err:
        print("unpatched fails:", type(err).__name__)
    from xtuner_llava_swap import compat
    init_dist("pytorch", backend="gloo")
    print("joined", dist.is_initialized(), dist.get_backend(), dist.get_world_size(),
          "dist_init_without_cuda" in compat.APPLIED)
    """, tmp_path)
    assert "unpatched fails:" in out and "joined True gloo 1 True" in out


def test_dist_init_untouched_with_an_accelerator(tmp_path):
    out = run_python("""
        import mmengine.device
        mmengine.device.is_cuda_available = lambda: True   # pretend a GPU is present
        from xtuner_llava_swap import compat
        import mmengine.dist.utils as dist_utils
        print("dist_init_without_cuda" in compat.APPLIED,
              getattr(dist_utils._init_dist_pytorch, "_without_device", False))
    """, tmp_path)
    assert out.split() == ["False", "False"]


def test_exit_status_check_sees_a_discarded_subprocess_result():
    from xtuner_llava_swap.compat import _calls_discarding_the_result

    def drops():
        import subprocess
        subprocess.run(["true"])

    def keeps():
        import subprocess
        return subprocess.run(["true"]).returncode

    assert _calls_discarding_the_result(drops, "subprocess.run")
    assert not _calls_discarding_the_result(keeps, "subprocess.run")


def test_xtuner_train_exits_with_the_training_status(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["xtuner", "train", str(tmp_path / "no_such_config.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "no_such_config.py" in proc.stderr


def test_qlora_zero3_patch_waits_for_xtuner_model_llava(tmp_path):
    out = run_python("""
        import sys
        import xtuner_llava_swap_startup        # what the .pth line does at startup
        import xtuner
        from xtuner_llava_swap import compat
        print("eager", "xtuner.model.llava" in sys.modules or "deepspeed" in sys.modules,
              "qlora_zero3_without_quantization" in compat.APPLIED)
        import torch
        from mmengine.config import ConfigDict
        from transformers.integrations import HfDeepSpeedConfig
        from xtuner.model.llava import LLaVAModel
        print("after import", "qlora_zero3_without_quantization" in compat.APPLIED)
        zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3},
                                   "train_micro_batch_size_per_gpu": 1})
        plain = LLaVAModel._prepare_for_qlora_zero3(
            ConfigDict(torch_dtype=torch.float32, quantization_config=None))
        print("none kept", plain.torch_dtype, plain.quantization_config)
        qlora = LLaVAModel._prepare_for_qlora_zero3(
            ConfigDict(torch_dtype=torch.float32, quantization_config=ConfigDict(load_in_4bit=True)))
        print("4-bit prepared", qlora.quantization_config.bnb_4bit_quant_storage == qlora.torch_dtype)
    """, tmp_path)
    assert "eager False False" in out and "after import True" in out
    assert "none kept torch.float32 None" in out and "4-bit prepared True" in out


def run_ranks(script: Path, *args, nproc: int = 2) -> str:
    """``script`` under ``torchrun`` on ``nproc`` CPU ranks (gloo); its stdout. The
    environment is the trainings' (DeepSpeed's compiled CPU op cached in the venv)."""
    from support import free_port, train_env

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                           f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                           f"--master_port={free_port()}", str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=script.parent,
                          env=train_env(deepspeed=True, nproc=nproc))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_zero3_gathers_on_cpu_ranks_are_complete(tmp_path):
    # the problem is present in the DeepSpeed installed here (unpatched, 200 rounds of this
    # script gave 28-30 rounds with wrong values per rank, so 40 rounds show it with
    # probability > 0.99; patched, none) ...
    out = run_python("""
        from deepspeed.runtime.zero.partition_parameters import Init
        shipped = Init._allgather_params_coalesced
        from xtuner_llava_swap import compat        # applies at once: the module is loaded
        patched = Init._allgather_params_coalesced
        print("applied", "zero3_cpu_gathers_complete" in compat.APPLIED, patched is not shipped,
              compat._zero3_waits_for_the_last_gather_only())
        Init._allgather_params_coalesced = shipped
        print("problem present", compat._zero3_waits_for_the_last_gather_only())
    """, tmp_path)
    assert "applied True True False" in out and "problem present True" in out
    # ... and with the patch every rank reads back exactly what rank 0 wrote, every round
    out = run_ranks(Path(__file__).with_name("zero3_gather_ranks.py"), "patched", 40)
    # the ranks share one stdout, so their lines may interleave
    reports = sorted(re.findall(r"rank (\d) patched (\w+): ROUNDS (\d+) MISMATCHES (\d+)", out))
    assert reports == [(str(rank), "True", "40", "0") for rank in (0, 1)], out


def test_zero3_gather_patch_not_applied_with_an_ordering_accelerator(tmp_path):
    out = run_python("""
        from deepspeed.accelerator import get_accelerator
        accelerator = get_accelerator()
        accelerator.resolves_data_dependency = lambda: False  # as CUDA's: streams order work
        accelerator.is_synchronized_device = lambda: False
        from xtuner_llava_swap import compat
        import deepspeed.runtime.zero.partition_parameters as partition_parameters
        print("applied", "zero3_cpu_gathers_complete" in compat.APPLIED,
              getattr(partition_parameters.Init._allgather_params_coalesced, "_waits_for_each", False))
    """, tmp_path)
    assert "applied False False" in out


def test_xtuner_tools_patches_find_their_problem_in_those_tools_only(tmp_path):
    """``xtuner_chat_training_system_prompt`` and ``xtuner_tools_clip_only_tower``: present
    only in the processes of ``xtuner chat`` / ``mmbench`` whose command line has the
    problem (the tools themselves run with both in tests/xtuner_recipe)."""
    import xtuner

    from xtuner_llava_swap import compat
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    tools = Path(xtuner.__file__).resolve().parent / "tools"
    chat, mmbench = str(tools / "chat.py"), str(tools / "mmbench.py")
    assert [compat.xtuner_tool([script]) for script in (chat, mmbench, "train.py", "")] \
        == ["chat", "mmbench", None, None]
    assert compat.chat_system_template([chat, "LLM", "--prompt-template", "qwen2.5"]) == "qwen2.5"
    for argv in ([chat, "LLM", "--prompt-template", "qwen2.5", "--system", "Be brief."],
                 [chat, "LLM", "--prompt-template=qwen2.5", "--system-template=qwen2.5"],
                 [chat, "LLM", "--prompt-template", "vicuna"],       # xtuner's own template
                 [chat, "LLM", "--prompt-template", "qwen3"],        # no first-turn system
                 [chat, "LLM"], [mmbench, "LLM", "--prompt-template", "qwen2.5"],
                 ["other.py", "--prompt-template", "qwen2.5"]):
        assert compat.chat_system_template(argv) is None, argv
    siglip = build_tiny_tower("siglip-so400m-384", tmp_path / "siglip")
    clip = build_tiny_tower("clip-vit-large-336", tmp_path / "clip")
    (tmp_path / "llava" / "visual_encoder").mkdir(parents=True)
    (tmp_path / "llava" / "visual_encoder" / "config.json").write_text(
        (siglip / "config.json").read_text())
    line = compat.xtuner_tool_tower_refusal([chat, "LLM", "--visual-encoder", str(siglip)])
    assert line.startswith("xtuner chat / xtuner mmbench load the vision encoder as CLIP") \
        and "siglip-so400m-384" in line
    # the --llava folder's own encoder wins over --visual-encoder
    assert compat.xtuner_tool_tower_refusal(
        [mmbench, "LLM", "--visual-encoder", str(clip), "--llava", str(tmp_path / "llava")]) == line
    for encoder in (str(clip), "openai/clip-vit-large-patch14-336"):  # a hub id: not checked
        assert compat.xtuner_tool_tower_refusal([chat, "LLM", "--visual-encoder", encoder]) is None
    assert not compat._xtuner_tool_cannot_load_the_tower()  # this process is pytest
    assert not compat._xtuner_chat_drops_the_training_system()
