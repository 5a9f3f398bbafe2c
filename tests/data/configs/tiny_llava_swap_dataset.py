# Tiny LLaVA finetune that reads its data through LLaVASwapDataset (tests/data/test_train_loop.py).
# Every path is a placeholder overridden with --cfg-options by the test.
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import ConstantLR, OptimWrapper
from torch.optim import AdamW
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.map_fns import template_map_fn_factory
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop
from xtuner.model import LLaVAModel
from xtuner.utils import PROMPT_TEMPLATE

from xtuner_llava_swap.data import LLaVASwapDataset, llava_format_map_fn

llm_name_or_path = "LLM_FOLDER"
visual_encoder_name_or_path = "CLIP_FOLDER"
data_path = "DATA_JSON"
image_folder = "IMAGE_FOLDER"
cache_dir = "CACHE_FOLDER"
prompt_template = PROMPT_TEMPLATE.qwen_chat
max_length = 2048
batch_size = 2
max_iters = 3

tokenizer = dict(type=AutoTokenizer.from_pretrained,
                 pretrained_model_name_or_path=llm_name_or_path,
                 trust_remote_code=True, padding_side="right")
image_processor = dict(type=CLIPImageProcessor.from_pretrained,
                       pretrained_model_name_or_path=visual_encoder_name_or_path)
model = dict(
    type=LLaVAModel,
    freeze_llm=True,
    freeze_visual_encoder=True,
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=llm_name_or_path, trust_remote_code=True),
    visual_encoder=dict(type=CLIPVisionModel.from_pretrained,
                        pretrained_model_name_or_path=visual_encoder_name_or_path))

llava_dataset = dict(
    type=LLaVASwapDataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    image_processor=image_processor,
    dataset_map_fn=llava_format_map_fn,
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
    max_length=max_length,
    pad_image_to_square=True,
    cache_dir=cache_dir)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    dataset=llava_dataset,
    sampler=dict(type=LengthGroupedSampler, length_property="modality_length",
                 per_device_batch_size=batch_size),
    collate_fn=dict(type=default_collate_fn))

optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-3))
param_scheduler = [dict(type=ConstantLR, factor=1.0, by_epoch=False, begin=0, end=max_iters)]
train_cfg = dict(type=TrainLoop, max_iters=max_iters)

custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer)]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=1),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=2, max_keep_ckpts=2),
    sampler_seed=dict(type=DistSamplerSeedHook))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="gloo"))
visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
