"""``RunRecordHook``: check that the run's parts name one LLM profile, then record it.

Before the first iteration it compares its own ``profile`` (``swap_llm`` adds the hook with
the profile it swaps to) with the profile of every ``LLaVASwapDataset`` of the train
dataloader and of every ``EvaluateChatHook`` (each checked its own parts when it was
built), and raises :class:`~xtuner_llava_swap.profiles.profile_agreement.ProfileMismatchError` when
they differ. Then rank 0 writes the run record (:mod:`xtuner_llava_swap.run_record`) into
the work dir. Registered in mmengine's ``HOOKS`` registry (the one xtuner's runner builds
its hooks from) as ``RunRecordHook``.
"""
from __future__ import annotations

from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..run_record import make_record, write_record
from ..profiles.profile_agreement import agreed_profile


@HOOKS.register_module()
class RunRecordHook(Hook):
    """Write ``xtuner_llava_swap_run.json`` (see :mod:`xtuner_llava_swap.run_record`).

    Args:
        profile: the LLM profile the run trains (a name or an ``LLMProfile``).
    """

    priority = "VERY_HIGH"  # before EvaluateChatHook's first generation

    def __init__(self, profile):
        from ..profiles import get_profile

        self.profile = get_profile(profile).name

    def before_train(self, runner) -> None:
        from .hooks import EvaluateChatHook

        parts = [("custom_hooks RunRecordHook.profile", self.profile)]
        parts += [("train_dataloader.dataset (its tokenizer.profile and "
                   "template_map_fn.template)", getattr(dataset, "profile", None))
                  for dataset in _datasets(runner.train_dataloader.dataset)]
        parts += [("custom_hooks EvaluateChatHook (its profile, tokenizer.profile and "
                   "prompt_template)", hook.profile)
                  for hook in runner.hooks if isinstance(hook, EvaluateChatHook)]
        agreed_profile("RunRecordHook", parts)
        if not is_main_process():
            return
        model_cfg = runner.cfg.model
        model = _unwrapped(runner.model)
        tower = getattr(model, "visual_encoder", None)
        tower_profile = getattr(model, "vision_tower", None)  # LLaVASwapModel's VisionTower
        filename = getattr(runner.cfg, "filename", None)
        record = make_record(
            self.profile, model_cfg.llm.get("pretrained_model_name_or_path"),
            model_cfg.visual_encoder.get("pretrained_model_name_or_path"),
            getattr(getattr(tower, "config", None), "model_type", None),
            Path(filename).name if filename else None,
            getattr(tower_profile, "name", None))
        path = write_record(runner.work_dir, record)
        runner.logger.info(f"RunRecordHook: LLM profile {self.profile!r} recorded in {path}")


def _datasets(dataset) -> list:
    """``dataset`` and, for a concatenation (``.datasets``), its parts."""
    return [dataset, *(d for part in getattr(dataset, "datasets", ()) for d in _datasets(part))]


def _unwrapped(model):
    """The xtuner ``LLaVAModel`` inside DDP / DeepSpeed wrappers."""
    while not hasattr(model, "visual_encoder") and hasattr(model, "module"):
        model = model.module
    return model
